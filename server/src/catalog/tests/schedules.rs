//! Schedules: every field's round trip, unique names, listing, the scheduler's progress and the
//! record of fires, what a schedule finds once its cluster or location is gone, and the runs and
//! backups of a schedule.

use std::collections::BTreeMap;
use std::time::Duration;

use uuid::Uuid;

use super::{
    T0, at, backup_record, backup_run, insert_cluster, insert_location, labels, name, set_state,
};
use crate::catalog::Catalog;
use crate::error::Error;
use crate::model::Cluster;
use crate::model::location::Location;
use crate::model::run::{BackupKind, BackupSpec, ListRuns, PathFilter, RunState, TransferLimits};
use crate::model::schedule::{
    AwaitedRun, CronTrigger, FireCause, FireOutcome, FireProgress, FollowUp, PendingFire,
    PendingRetry, RetentionPolicy, RetryPolicy, Schedule, ScheduleFire, Trigger,
};

const MINUTE: i64 = 60_000;

fn schedule(schedule_name: &str, cluster: &Cluster, location: &Location) -> Schedule {
    Schedule {
        id: Uuid::now_v7(),
        name: name(schedule_name),
        cluster_id: cluster.id,
        cluster_name: Some(cluster.name.to_string()),
        trigger: Trigger::interval("interval", Duration::from_secs(3600)).expect("interval"),
        backup: BackupSpec {
            kind: BackupKind::Full,
            location_id: location.id,
            location_name: location.name.to_string(),
            filter: PathFilter::default(),
            limits: TransferLimits::default(),
            labels: BTreeMap::new(),
        },
        retention: RetentionPolicy::default(),
        retry: RetryPolicy::default(),
        validation: None,
        paused: false,
        next_fire_ms: Some(T0 as i64 + 60 * MINUTE),
        last_fire: None,
        last_run_id: None,
        last_run_state: None,
        last_error: String::new(),
        progress: FireProgress::default(),
        create_time: at(T0),
        update_time: at(T0),
    }
}

async fn find(catalog: &Catalog, reference: &str) -> Schedule {
    catalog
        .find_schedule(reference)
        .await
        .expect("find schedule")
        .expect("the schedule exists")
}

fn fire(fire_time_ms: i64, attempt: u32, outcome: FireOutcome) -> ScheduleFire {
    ScheduleFire {
        fire: PendingFire {
            fire_time_ms,
            attempt,
            cause: if attempt == 0 {
                FireCause::Trigger
            } else {
                FireCause::Retry
            },
            missed: 0,
        },
        outcome,
        record_time_ms: fire_time_ms + 5,
        follow_up: None,
    }
}

/// Every setting comes back as written, found by id and by name; the cluster's and location's
/// names are read as they are now.
async fn a_schedule_round_trips_every_field(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7500).await;
    let location = insert_location(catalog, "vault").await;
    let mut nightly = schedule("nightly", &cluster, &location);
    nightly.trigger = Trigger::Cron(Box::new(
        CronTrigger::parse("cron", "30 2 * * MON-FRI", "Europe/Berlin").expect("cron"),
    ));
    nightly.backup.kind = BackupKind::Incremental;
    nightly.backup.filter = PathFilter {
        include: vec!["/data/**".into()],
        exclude: vec!["**/tmp/**".into()],
    };
    nightly.backup.limits = TransferLimits {
        rate_limit_bytes_per_second: 1 << 20,
        concurrency: 4,
        node_parallelism: 2,
    };
    nightly.backup.labels = labels(&[("tier", "gold")]).as_map().clone();
    nightly.retention = RetentionPolicy {
        keep_last: 7,
        keep_within: Some(Duration::from_secs(3 * 86_400)),
        keep_daily: 7,
        keep_weekly: 4,
        keep_monthly: 12,
    };
    nightly.retry = RetryPolicy::parse(
        "retry",
        3,
        Duration::from_secs(60),
        Duration::from_secs(3600),
    )
    .expect("retry");
    catalog.insert_schedule(&nightly).await.expect("insert");
    assert_eq!(find(catalog, &nightly.id.to_string()).await, nightly);
    assert_eq!(find(catalog, "nightly").await, nightly);
    assert_eq!(catalog.find_schedule("other").await.expect("find"), None);

    let mut paused = schedule("paused", &cluster, &location);
    paused.paused = true;
    paused.next_fire_ms = None;
    catalog.insert_schedule(&paused).await.expect("insert");
    assert_eq!(find(catalog, "paused").await, paused);
}

/// Names are unique on insert and on rename; changes and deletions of unknown schedules are
/// NOT_FOUND; a rename is applied with every other change at once.
async fn schedule_names_are_unique_and_changes_apply_whole(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7510).await;
    let location = insert_location(catalog, "vault").await;
    let first = schedule("first", &cluster, &location);
    catalog.insert_schedule(&first).await.expect("insert");
    let mut second = schedule("second", &cluster, &location);
    catalog.insert_schedule(&second).await.expect("insert");
    let twin = schedule("first", &cluster, &location);
    match catalog.insert_schedule(&twin).await {
        Err(Error::AlreadyExists(message)) => assert!(message.contains("first"), "{message}"),
        other => panic!("a taken name: {other:?}"),
    }
    second.name = name("first");
    second.paused = true;
    match catalog.update_schedule(&second).await {
        Err(Error::AlreadyExists(_)) => {}
        other => panic!("a rename to a taken name: {other:?}"),
    }
    assert!(!find(catalog, "second").await.paused, "nothing applied");

    second.name = name("renamed");
    second.next_fire_ms = None;
    second.retention.keep_last = 3;
    second.update_time = at(T0 + 10);
    catalog.update_schedule(&second).await.expect("update");
    assert_eq!(find(catalog, "renamed").await, second);

    let unknown = schedule("unknown", &cluster, &location);
    for result in [
        catalog.update_schedule(&unknown).await,
        catalog.delete_schedule(unknown.id).await,
        catalog
            .save_fire_progress(unknown.id, &FireProgress::default(), None)
            .await,
    ] {
        match result {
            Err(Error::NotFound { kind, .. }) => assert_eq!(kind, "schedule"),
            other => panic!("an unknown schedule: {other:?}"),
        }
    }
}

/// Listing is by name, a page at a time, optionally of one cluster.
async fn schedules_are_listed_by_name_a_page_at_a_time(catalog: &Catalog) {
    let prod = insert_cluster(catalog, "prod", 7520).await;
    let test = insert_cluster(catalog, "test", 7530).await;
    let location = insert_location(catalog, "vault").await;
    for (schedule_name, cluster) in [("c", &prod), ("a", &test), ("b", &prod), ("d", &prod)] {
        catalog
            .insert_schedule(&schedule(schedule_name, cluster, &location))
            .await
            .expect("insert");
    }
    let names = |items: &[Schedule]| -> Vec<String> {
        items.iter().map(|item| item.name.to_string()).collect()
    };
    let (page, more) = catalog.list_schedules(2, None, None).await.expect("list");
    assert_eq!((names(&page), more), (vec!["a".into(), "b".into()], true));
    let (page, more) = catalog
        .list_schedules(2, Some(&page[1].name), None)
        .await
        .expect("list");
    assert_eq!((names(&page), more), (vec!["c".into(), "d".into()], false));
    let (page, more) = catalog
        .list_schedules(10, None, Some(prod.id))
        .await
        .expect("list");
    assert_eq!(
        (names(&page), more),
        (vec!["b".into(), "c".into(), "d".into()], false)
    );
}

/// The scheduler's progress is kept; a fire's record sets the last fire, run and error in one
/// step; the same fire recorded twice keeps its first record; fires list newest first.
async fn fires_and_the_schedulers_progress_are_recorded(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7540).await;
    let location = insert_location(catalog, "vault").await;
    let mut run = backup_run(&cluster, &location, T0 + 1);
    catalog.insert_run(&run).await.expect("insert run");
    let nightly = schedule("nightly", &cluster, &location);
    catalog.insert_schedule(&nightly).await.expect("insert");
    let fire_ms = T0 as i64 + 60 * MINUTE;

    let pending = FireProgress {
        pending: Some(PendingFire {
            fire_time_ms: fire_ms,
            attempt: 0,
            cause: FireCause::Trigger,
            missed: 2,
        }),
        ..FireProgress::default()
    };
    catalog
        .save_fire_progress(nightly.id, &pending, Some(fire_ms + 60 * MINUTE))
        .await
        .expect("save progress");
    let read = find(catalog, "nightly").await;
    assert_eq!(read.progress, pending);
    assert_eq!(read.next_fire_ms, Some(fire_ms + 60 * MINUTE));
    assert_eq!(read.last_fire, None);

    let started = ScheduleFire {
        fire: pending.pending.expect("pending"),
        outcome: FireOutcome::Started { run_id: run.id },
        record_time_ms: fire_ms + 3,
        follow_up: None,
    };
    let awaiting = FireProgress {
        awaited: Some(AwaitedRun {
            run_id: run.id,
            fire_time_ms: fire_ms,
            attempt: 0,
        }),
        ..FireProgress::default()
    };
    catalog
        .record_fire(nightly.id, &started, &awaiting, "")
        .await
        .expect("record");
    let read = find(catalog, "nightly").await;
    assert_eq!(read.progress, awaiting);
    assert_eq!(read.last_fire.as_ref(), Some(&started));
    assert_eq!(read.last_run_id, Some(run.id));
    assert_eq!(read.last_run_state, Some(RunState::Queued));
    set_state(catalog, &mut run, RunState::Failed).await;
    assert_eq!(
        find(catalog, "nightly").await.last_run_state,
        Some(RunState::Failed)
    );

    // A retry that was skipped, then the same fire recorded again (a restart in between).
    let retry = FireProgress {
        retry: Some(PendingRetry {
            at_ms: fire_ms + 10 * MINUTE,
            fire_time_ms: fire_ms,
            attempt: 2,
        }),
        ..FireProgress::default()
    };
    let skipped = fire(
        fire_ms,
        1,
        FireOutcome::Skipped {
            active_run_id: Some(run.id),
            message: "busy".into(),
        },
    );
    catalog
        .record_fire(nightly.id, &skipped, &retry, "skipped: busy")
        .await
        .expect("record");
    let again = ScheduleFire {
        outcome: FireOutcome::Failed {
            message: "other".into(),
        },
        ..skipped.clone()
    };
    catalog
        .record_fire(nightly.id, &again, &retry, "skipped: busy")
        .await
        .expect("record again");
    let read = find(catalog, "nightly").await;
    assert_eq!(read.progress, retry);
    assert_eq!(read.last_error, "skipped: busy");
    assert_eq!(read.last_run_id, Some(run.id), "a skip keeps the last run");
    assert_eq!(read.last_fire.as_ref(), Some(&skipped));

    let failed = fire(
        fire_ms + 60 * MINUTE,
        0,
        FireOutcome::Failed {
            message: "location gone".into(),
        },
    );
    catalog
        .record_fire(nightly.id, &failed, &FireProgress::default(), "gone")
        .await
        .expect("record");
    let (page, more) = catalog
        .list_fires(nightly.id, 2, None)
        .await
        .expect("list fires");
    assert_eq!(page, [failed.clone(), skipped.clone()]);
    assert!(more);
    // What followed the run's end is added to its fire, with the progress after it, at once.
    let follow_up = FollowUp {
        time_ms: fire_ms + 20 * MINUTE,
        deleted_backups: vec![Uuid::now_v7(), Uuid::now_v7()],
    };
    catalog
        .record_follow_up(
            nightly.id,
            (fire_ms, 0),
            &follow_up,
            &FireProgress::default(),
            "retention could not delete",
        )
        .await
        .expect("record follow-up");
    let read = find(catalog, "nightly").await;
    assert_eq!(read.progress, FireProgress::default());
    assert_eq!(read.last_error, "retention could not delete");
    let (page, more) = catalog
        .list_fires(nightly.id, 2, Some((fire_ms, 1)))
        .await
        .expect("list fires");
    assert_eq!(
        page,
        [ScheduleFire {
            follow_up: Some(follow_up),
            ..started
        }]
    );
    assert!(!more);
    catalog
        .set_schedule_error(nightly.id, "")
        .await
        .expect("clear error");
    assert_eq!(find(catalog, "nightly").await.last_error, "");

    catalog.delete_schedule(nightly.id).await.expect("delete");
    assert_eq!(catalog.find_schedule("nightly").await.expect("find"), None);
    let (page, _) = catalog
        .list_fires(nightly.id, 10, None)
        .await
        .expect("list fires");
    assert!(page.is_empty(), "fires go with their schedule");
}

/// The scheduler is handed the unpaused schedules with a fire or retry that came, and every
/// schedule with a pending fire or an awaited run (paused ones too), and no other.
async fn the_schedules_to_tend_are_those_with_something_due(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7550).await;
    let location = insert_location(catalog, "vault").await;
    let now = T0 as i64 + 100 * MINUTE;
    let mut due = schedule("due", &cluster, &location);
    due.next_fire_ms = Some(now);
    let mut later = schedule("later", &cluster, &location);
    later.next_fire_ms = Some(now + 1);
    let mut paused = schedule("paused", &cluster, &location);
    paused.paused = true;
    paused.next_fire_ms = Some(now - MINUTE);
    let mut retrying = schedule("retrying", &cluster, &location);
    retrying.next_fire_ms = Some(now + MINUTE);
    let mut pending = schedule("pending", &cluster, &location);
    pending.next_fire_ms = Some(now + MINUTE);
    let mut awaiting = schedule("awaiting", &cluster, &location);
    awaiting.next_fire_ms = Some(now + MINUTE);
    // Paused, but fired with RunSchedule: its run's end is still to be handled.
    awaiting.paused = true;
    for item in [&due, &later, &paused, &retrying, &pending, &awaiting] {
        catalog.insert_schedule(item).await.expect("insert");
    }
    let progress = [
        (
            &retrying,
            FireProgress {
                retry: Some(PendingRetry {
                    at_ms: now - 1,
                    fire_time_ms: now - MINUTE,
                    attempt: 1,
                }),
                ..FireProgress::default()
            },
        ),
        (
            &pending,
            FireProgress {
                pending: Some(PendingFire {
                    fire_time_ms: now - MINUTE,
                    attempt: 0,
                    cause: FireCause::RunNow,
                    missed: 0,
                }),
                ..FireProgress::default()
            },
        ),
        (
            &awaiting,
            FireProgress {
                awaited: Some(AwaitedRun {
                    run_id: Uuid::now_v7(),
                    fire_time_ms: now - MINUTE,
                    attempt: 0,
                }),
                ..FireProgress::default()
            },
        ),
    ];
    for (item, progress) in progress {
        catalog
            .save_fire_progress(item.id, &progress, item.next_fire_ms)
            .await
            .expect("save progress");
    }
    let names: Vec<String> = catalog
        .schedules_to_tend(now)
        .await
        .expect("due")
        .iter()
        .map(|item| item.name.to_string())
        .collect();
    assert_eq!(names, ["awaiting", "due", "pending", "retrying"]);
}

/// A schedule outlives its cluster and its location: it reads back with no cluster name and
/// an empty location name, which its fires report.
async fn a_schedule_outlives_its_cluster_and_location(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7560).await;
    let location = insert_location(catalog, "vault").await;
    let nightly = schedule("nightly", &cluster, &location);
    catalog.insert_schedule(&nightly).await.expect("insert");
    catalog
        .delete_location(location.id, "vault")
        .await
        .expect("delete location");
    let read = find(catalog, "nightly").await;
    assert_eq!(read.backup.location_name, "");
    assert_eq!(read.backup.location_id, location.id);
    catalog
        .delete_cluster(cluster.id, "prod")
        .await
        .expect("delete cluster");
    let read = find(catalog, "nightly").await;
    assert_eq!(read.cluster_name, None);
    assert_eq!(read.cluster_id, cluster.id);
}

/// Retention sees the schedule's own committed backups only; runs list by schedule.
async fn the_backups_and_runs_of_a_schedule_are_its_own(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7570).await;
    let location = insert_location(catalog, "vault").await;
    let nightly = schedule("nightly", &cluster, &location);
    catalog.insert_schedule(&nightly).await.expect("insert");
    let mut own = Vec::new();
    for (offset, schedule_id) in [(10, Some(nightly.id)), (20, None), (30, Some(nightly.id))] {
        let mut run = backup_run(&cluster, &location, T0 + offset);
        run.schedule_id = schedule_id;
        catalog.insert_run(&run).await.expect("insert run");
        set_state(catalog, &mut run, RunState::Running).await;
        let mut backup = backup_record(&cluster, &location, T0 + offset, Some(run.id));
        backup.schedule_id = schedule_id;
        catalog.record_backup(&backup).await.expect("record");
        set_state(catalog, &mut run, RunState::Succeeded).await;
        if schedule_id.is_some() {
            own.push((run.id, backup.id));
        }
    }
    let backups = catalog
        .schedule_backups(nightly.id)
        .await
        .expect("schedule backups");
    let ids: Vec<Uuid> = backups.iter().map(|backup| backup.id).collect();
    assert_eq!(ids, [own[0].1, own[1].1], "oldest first, its own only");
    assert_eq!(backups[0].start_ms, T0 as i64 + 10);
    let (runs, _) = catalog
        .list_runs(&ListRuns {
            page_size: 10,
            schedule_id: Some(nightly.id),
            ..ListRuns::default()
        })
        .await
        .expect("list runs");
    let ids: Vec<Uuid> = runs.iter().map(|run| run.id).collect();
    assert_eq!(ids, [own[1].0, own[0].0], "newest first, its own only");
}

catalog_tests!(
    a_schedule_round_trips_every_field,
    schedule_names_are_unique_and_changes_apply_whole,
    schedules_are_listed_by_name_a_page_at_a_time,
    fires_and_the_schedulers_progress_are_recorded,
    the_schedules_to_tend_are_those_with_something_due,
    a_schedule_outlives_its_cluster_and_location,
    the_backups_and_runs_of_a_schedule_are_its_own,
);
