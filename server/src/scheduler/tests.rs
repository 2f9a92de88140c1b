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

struct Fixture {
    _folder: tempfile::TempDir,
    coffer: Coffer,
    vault: crate::model::location::Location,
    schedule: crate::model::schedule::Schedule,
    start: i64,
}

/// A catalog with a cluster whose one node is a closed port, a location, and an hourly
/// schedule with `attempts` retries a minute apart.
async fn fixture(attempts: u32) -> Fixture {
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
            retry: crate::model::schedule::RetryPolicy::parse(
                "retry",
                attempts,
                Duration::from_secs(60),
                Duration::from_secs(60),
            )
            .expect("retry"),
            validation: None,
            paused: false,
        })
        .await
        .expect("create");
    Fixture {
        _folder: folder,
        coffer,
        vault,
        schedule,
        start,
    }
}

impl Fixture {
    async fn runs(&self) -> Vec<crate::model::run::Run> {
        self.coffer
            .catalog
            .list_runs(&ListRuns {
                page_size: 10,
                schedule_id: Some(self.schedule.id),
                ..ListRuns::default()
            })
            .await
            .expect("list runs")
            .0
    }

    async fn fires(&self) -> Vec<crate::model::schedule::ScheduleFire> {
        self.coffer
            .catalog
            .list_fires(self.schedule.id, 10, None)
            .await
            .expect("fires")
            .0
    }

    /// Writes `pending` as the scheduler does before starting its run, as a crash leaves it.
    async fn leave_pending(&self, pending: PendingFire) {
        let schedule = self.coffer.schedules.get("hourly").await.expect("get");
        let progress = FireProgress {
            pending: Some(pending),
            ..schedule.progress
        };
        self.coffer
            .catalog
            .save_fire_progress(self.schedule.id, &progress, schedule.next_fire_ms)
            .await
            .expect("save");
    }

    /// Waits for a run to end (its node is a closed port: it fails at once).
    async fn ended(&self, run_id: uuid::Uuid) {
        for _ in 0..200 {
            let run = self.coffer.catalog.get_run(run_id).await.expect("get run");
            if run.is_some_and(|run| run.state.is_final()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("run {run_id} did not end");
    }
}

fn trigger_fire(fire_time_ms: i64) -> PendingFire {
    PendingFire {
        fire_time_ms,
        attempt: 0,
        cause: FireCause::Trigger,
        missed: 0,
    }
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
            validation: None,
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

/// RunSchedule finds a fire a crash left pending: it is fired and recorded first, not replaced.
#[tokio::test]
async fn run_now_finishes_a_pending_fire_before_its_own() {
    let test = fixture(0).await;
    let fire_ms = test.start + HOUR;
    test.leave_pending(trigger_fire(fire_ms)).await;
    let own = test.coffer.schedules.run_now("hourly").await;
    let fires = test.fires().await;
    assert_eq!(fires.len(), 2, "{fires:#?}");
    let pending = fires
        .iter()
        .find(|fire| fire.fire.fire_time_ms == fire_ms)
        .expect("the pending fire is recorded");
    assert!(matches!(pending.outcome, FireOutcome::Started { .. }));
    let runs = test.runs().await;
    match own {
        Ok(fire) => assert_eq!(runs.len(), 2, "{fire:?}"),
        // Its run may still have been active: then the fire of now was a skip.
        Err(error) => {
            assert!(error.to_string().contains("skipped"), "{error}");
            assert_eq!(runs.len(), 1);
        }
    }
    test.coffer.close().await;
}

/// RunSchedule after a run that failed and was not followed up yet: its retry is planned and
/// its fire records the follow-up before the new run takes its place.
#[tokio::test]
async fn run_now_follows_up_the_run_before_it() {
    let test = fixture(2).await;
    let fire_ms = test.start + HOUR;
    test.leave_pending(trigger_fire(fire_ms)).await;
    test.coffer.scheduler.tend().await.expect("tend");
    let first = test.runs().await;
    assert_eq!(first.len(), 1);
    test.ended(first[0].id).await;
    let fire = test
        .coffer
        .schedules
        .run_now("hourly")
        .await
        .expect("run now");
    assert!(matches!(fire.outcome, FireOutcome::Started { run_id } if run_id != first[0].id));
    let recorded = test.fires().await;
    let earlier = recorded
        .iter()
        .find(|recorded| recorded.fire.fire_time_ms == fire_ms)
        .expect("the earlier fire");
    assert!(earlier.follow_up.is_some(), "followed up: {earlier:?}");
    let schedule = test.coffer.schedules.get("hourly").await.expect("get");
    let retry = schedule
        .progress
        .retry
        .expect("the failed run's retry is planned");
    assert_eq!((retry.fire_time_ms, retry.attempt), (fire_ms, 1));
    test.coffer.close().await;
}

/// A fire asked for again after its settings changed (the location renamed) finds its run by
/// the key, and starts no second one.
#[tokio::test]
async fn a_fire_asked_again_after_a_rename_finds_its_run() {
    let test = fixture(3).await;
    let fire_ms = test.start + HOUR;
    test.leave_pending(trigger_fire(fire_ms)).await;
    test.coffer.scheduler.tend().await.expect("tend");
    let runs = test.runs().await;
    assert_eq!(runs.len(), 1);
    test.ended(runs[0].id).await;
    let mut renamed = test.vault.clone();
    renamed.name = name("vault-renamed");
    test.coffer
        .catalog
        .update_location(&renamed, false)
        .await
        .expect("rename");
    test.leave_pending(trigger_fire(fire_ms)).await;
    test.coffer.scheduler.tend().await.expect("tend");
    assert_eq!(test.runs().await.len(), 1, "no second run for the fire");
    // Had the fire been taken for one that started no run, its error would say so (and a
    // retry would start a second run for it).
    let schedule = test.coffer.schedules.get("hourly").await.expect("get");
    assert_eq!(schedule.last_error, "", "the fire started its run");
    let fires = test.fires().await;
    assert_eq!(fires.len(), 1);
    assert_eq!(
        fires[0].outcome,
        FireOutcome::Started { run_id: runs[0].id }
    );
    test.coffer.close().await;
}
