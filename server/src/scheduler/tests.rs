//! The scheduler against a real catalog, for the crash windows a test with the real binaries
//! cannot aim at: a server killed after writing a fire as pending and before starting its run,
//! and one killed after starting the run and before recording the fire. Both must end with one
//! run and one fire record. (The node is a closed port, so the runs fail at once: what is
//! tested is the firing, not the backup.)

use std::time::Duration;

use crate::Coffer;
use crate::catalog::tests::{cluster, fs_location, name, node};
use crate::config::ServerOptions;
use crate::model::run::ListRuns;
use crate::model::schedule::{FireCause, FireOutcome, FireProgress, PendingFire};

const HOUR: i64 = 3_600_000;

async fn open(folder: &std::path::Path, clock_ms: i64) -> Coffer {
    let clock = folder.join("clock");
    std::fs::write(&clock, clock_ms.to_string()).expect("write clock");
    let config = ServerOptions {
        catalog: Some(folder.join("catalog.db")),
        agent_connect_timeout: Some(Duration::from_millis(200)),
        scheduler_clock_file: Some(clock),
        ..ServerOptions::default()
    }
    .resolve()
    .expect("config");
    Coffer::open(&config).await.expect("open")
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

#[tokio::test]
async fn a_pending_fire_left_by_a_crash_starts_its_run_once() {
    let folder = tempfile::tempdir().expect("tempdir");
    let start = 1_780_000_000_000;
    let coffer = open(folder.path(), start).await;
    let prod = cluster("prod", vec![node("127.0.0.1", closed_port(), "dc1", "r1")]);
    coffer.catalog.insert_cluster(&prod).await.expect("cluster");
    let vault = fs_location("vault");
    coffer
        .catalog
        .insert_location(&vault)
        .await
        .expect("location");
    let schedule = coffer
        .schedules
        .create(crate::model::schedule::NewSchedule {
            name: name("hourly"),
            cluster: "prod".into(),
            trigger: crate::model::schedule::Trigger::interval(
                "interval",
                Duration::from_secs(3600),
            )
            .expect("interval"),
            backup: crate::model::schedule::ScheduledBackup {
                kind: crate::model::run::BackupKind::Full,
                location: "vault".into(),
                filter: Default::default(),
                limits: Default::default(),
                labels: Default::default(),
            },
            retention: Default::default(),
            retry: Default::default(),
            paused: false,
        })
        .await
        .expect("create");
    let fire_ms = start + HOUR;
    assert_eq!(schedule.next_fire_ms, Some(fire_ms));
    let pending = PendingFire {
        fire_time_ms: fire_ms,
        attempt: 0,
        cause: FireCause::Trigger,
        missed: 0,
    };
    let runs = || async {
        coffer
            .catalog
            .list_runs(&ListRuns {
                page_size: 10,
                schedule_id: Some(schedule.id),
                ..ListRuns::default()
            })
            .await
            .expect("list runs")
            .0
    };

    // Killed after writing the pending fire, before starting its run: the next pass starts it.
    let crashed = FireProgress {
        pending: Some(pending),
        ..FireProgress::default()
    };
    coffer
        .catalog
        .save_fire_progress(schedule.id, &crashed, Some(fire_ms + HOUR))
        .await
        .expect("save");
    coffer.scheduler.tend().await.expect("tend");
    let started = runs().await;
    assert_eq!(started.len(), 1);
    let run = &started[0];
    assert_eq!(
        run.idempotency_key.as_deref(),
        Some(pending.idempotency_key(schedule.id).as_str())
    );
    let read = coffer.schedules.get("hourly").await.expect("get");
    assert_eq!(read.progress.pending, None);
    assert_eq!(
        read.next_fire_ms,
        Some(fire_ms + HOUR),
        "not fired a second time"
    );
    let fire = read.last_fire.expect("recorded");
    assert_eq!(fire.outcome, FireOutcome::Started { run_id: run.id });

    // Killed after starting the run, before recording the fire: asking again finds the run.
    coffer
        .catalog
        .save_fire_progress(schedule.id, &crashed, Some(fire_ms + HOUR))
        .await
        .expect("save");
    coffer.scheduler.tend().await.expect("tend");
    let after = runs().await;
    assert_eq!(after.len(), 1, "still one run: {after:#?}");
    let (fires, _) = coffer
        .catalog
        .list_fires(schedule.id, 10, None)
        .await
        .expect("fires");
    assert_eq!(fires.len(), 1, "one fire record");
    assert_eq!(
        coffer
            .schedules
            .get("hourly")
            .await
            .expect("get")
            .progress
            .pending,
        None
    );
    coffer.close().await;
}
