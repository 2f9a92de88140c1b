//! Runs: recording (one active run per cluster, idempotency keys), every field's round trip for
//! backup and restore runs, transitions and progress, listing, and what start-up recovery reads.

use std::collections::BTreeMap;
use std::time::Duration;

use uuid::Uuid;

use super::{T0, at, backup_run, insert_cluster, insert_location, ms_of, node, set_state};
use crate::catalog::{Catalog, RunInsert};
use crate::error::Error;
use crate::model::Cluster;
use crate::model::location::Location;
use crate::model::run::{
    BackupKind, BackupSpec, Counters, ListRuns, NodeMapping, NodePhase, NodeProgress, PathFilter,
    RestoreHook, RestoreSource, RestoreSpec, Run, RunKind, RunSpec, RunState, TransferLimits,
};

fn all() -> ListRuns {
    ListRuns {
        page_size: 1000,
        ..ListRuns::default()
    }
}

/// A queued restore of `backup_id` onto `cluster`, asked for as a point in time, with a
/// hook and an explicit mapping of every node.
fn restore_run(cluster: &Cluster, location: &Location, create_ms: u64) -> Run {
    let backup_id = Uuid::now_v7();
    let mappings: Vec<NodeMapping> = cluster
        .nodes
        .iter()
        .map(|node| NodeMapping {
            source_node_id: Uuid::now_v7(),
            target_node_id: node.info.node_id,
        })
        .collect();
    Run {
        kind: RunKind::Restore,
        spec: RunSpec::Restore(RestoreSpec {
            source: RestoreSource::PointInTime {
                source_cluster_id: Uuid::now_v7(),
                as_of_ms: 1_700_000_000_123,
                location_id: Some(location.id),
            },
            backup_id,
            location_id: location.id,
            requested_mappings: mappings[..1].to_vec(),
            mappings: mappings.clone(),
            filter: PathFilter {
                include: vec!["/var/lib/**".into()],
                exclude: Vec::new(),
            },
            overwrite: true,
            limits: TransferLimits {
                rate_limit_bytes_per_second: 10 << 20,
                concurrency: 4,
                node_parallelism: 1,
            },
            hook: Some(RestoreHook {
                command: vec!["nodetool".into(), "refresh".into()],
                timeout_seconds: 90,
            }),
        }),
        backup_id: Some(backup_id),
        nodes: mappings
            .iter()
            .map(|mapping| {
                NodeProgress::queued(mapping.target_node_id, Some(mapping.source_node_id))
            })
            .collect(),
        ..backup_run(cluster, location, create_ms)
    }
}

/// The ids of a listing, newest first, following the `more` flag with cursors made as the run
/// manager makes them (create ms and id of the last run of the page).
async fn all_pages(catalog: &Catalog, query: ListRuns) -> Vec<Vec<Uuid>> {
    let mut query = query;
    let mut pages = Vec::new();
    loop {
        let (items, more) = catalog.list_runs(&query).await.expect("list runs");
        assert!(items.len() <= query.page_size as usize);
        pages.push(items.iter().map(|run| run.id).collect());
        if !more {
            return pages;
        }
        let last = items.last().expect("a page followed by more is not empty");
        let after = Some((ms_of(last.create_time), last.id));
        // A cursor that does not move past its page would page forever.
        assert_ne!(after, query.after, "the cursor moves forward");
        query.after = after;
        assert!(pages.len() <= 1000, "paging ends");
    }
}

fn ids(runs: &[&Run]) -> Vec<Uuid> {
    runs.iter().map(|run| run.id).collect()
}

/// Records `run` and moves it to `state`.
async fn record(catalog: &Catalog, mut run: Run, state: RunState) -> Run {
    assert_eq!(
        catalog.insert_run(&run).await.expect("insert run"),
        RunInsert::Inserted
    );
    set_state(catalog, &mut run, state).await;
    run
}

/// A backup run's every field comes back: spec (JSON), dry run, key, schedule, backup,
/// times, nodes in the order written; the cluster name is the cluster's.
async fn a_backup_run_round_trips_every_field(catalog: &Catalog) {
    let cluster = super::cluster(
        "prod",
        vec![
            node("10.0.0.1", 7400, "dc1", "r1"),
            node("10.0.0.2", 7400, "dc1", "r1"),
            node("10.0.0.3", 7400, "dc1", "r1"),
        ],
    );
    catalog
        .insert_cluster(&cluster)
        .await
        .expect("insert cluster");
    let location = insert_location(catalog, "local").await;
    let mut run = backup_run(&cluster, &location, T0 + 100);
    run.spec = RunSpec::Backup(BackupSpec {
        kind: BackupKind::Incremental,
        location_id: location.id,
        location_name: "local".into(),
        filter: PathFilter {
            include: vec!["/a/**".into()],
            exclude: vec!["**/*.tmp".into()],
        },
        limits: TransferLimits {
            rate_limit_bytes_per_second: 1 << 20,
            concurrency: 2,
            node_parallelism: 3,
        },
        labels: BTreeMap::from([("env".into(), "prod".into())]),
    });
    run.dry_run = true;
    run.idempotency_key = Some("nightly-2025-11-21".into());
    run.schedule_id = Some(Uuid::now_v7());
    run.update_time = at(T0 + 101);
    run.nodes.reverse();
    assert_eq!(
        catalog.insert_run(&run).await.expect("insert"),
        RunInsert::Inserted
    );
    assert_eq!(
        catalog.get_run(run.id).await.expect("get"),
        Some(run.clone())
    );
    assert_eq!(catalog.get_run(Uuid::now_v7()).await.expect("get"), None);

    // Optional fields left out come back left out.
    let mut plain = backup_run(&cluster, &location, T0 + 200);
    plain.backup_id = None;
    set_state(catalog, &mut run, RunState::Failed).await;
    catalog.insert_run(&plain).await.expect("insert");
    let read = catalog.get_run(plain.id).await.expect("get").expect("run");
    assert_eq!(read, plain);
    assert_eq!(
        (read.idempotency_key, read.schedule_id, read.backup_id),
        (None, None, None)
    );
    assert_eq!((read.start_time, read.finish_time), (None, None));
}

/// A restore run's spec (source, mappings, hook) and its nodes' source node ids come back.
async fn a_restore_run_round_trips_every_field(catalog: &Catalog) {
    let cluster = super::cluster(
        "target",
        vec![
            node("10.0.0.1", 7400, "dc1", "r1"),
            node("10.0.0.2", 7400, "dc1", "r1"),
        ],
    );
    catalog
        .insert_cluster(&cluster)
        .await
        .expect("insert cluster");
    let location = insert_location(catalog, "local").await;
    let run = restore_run(&cluster, &location, T0);
    catalog.insert_run(&run).await.expect("insert");
    assert_eq!(
        catalog.get_run(run.id).await.expect("get"),
        Some(run.clone())
    );

    let mut by_id = restore_run(&cluster, &location, T0 + 1);
    if let RunSpec::Restore(spec) = &mut by_id.spec {
        spec.source = RestoreSource::BackupId(spec.backup_id);
        spec.hook = None;
        spec.requested_mappings.clear();
    }
    by_id.nodes[1].source_node_id = None;
    let mut run = run;
    set_state(catalog, &mut run, RunState::Succeeded).await;
    catalog.insert_run(&by_id).await.expect("insert");
    assert_eq!(catalog.get_run(by_id.id).await.expect("get"), Some(by_id));
}

/// Every transition, and progress in between, is written whole: state, times, error,
/// backup id, and each node's phase, counters (all of them, eta included) and error.
/// What a run was asked to do does not change.
async fn transitions_and_progress_are_saved_whole(catalog: &Catalog) {
    let cluster = super::cluster(
        "prod",
        vec![
            node("10.0.0.1", 7400, "dc1", "r1"),
            node("10.0.0.2", 7400, "dc1", "r1"),
        ],
    );
    catalog
        .insert_cluster(&cluster)
        .await
        .expect("insert cluster");
    let location = insert_location(catalog, "local").await;
    let mut run = backup_run(&cluster, &location, T0);
    catalog.insert_run(&run).await.expect("insert");
    let reads_back = |run: Run| async move {
        assert_eq!(
            catalog.get_run(run.id).await.expect("get").as_ref(),
            Some(&run)
        );
    };

    run.state = RunState::Running;
    run.start_time = Some(at(T0 + 5));
    run.update_time = at(T0 + 5);
    run.nodes[0].phase = NodePhase::Snapshotting;
    catalog.save_run(&run).await.expect("save");
    reads_back(run.clone()).await;

    run.nodes[0].phase = NodePhase::Uploading;
    run.nodes[0].counters = Counters {
        files_total: 10,
        files_done: 4,
        files_skipped: 1,
        bytes_total: 6 << 30,
        bytes_done: 3 << 30,
        bytes_skipped: 1 << 30,
        bytes_transferred: (1 << 30) + 7,
        objects_uploaded: 3,
        rate_bytes_per_second: 100 << 20,
        eta: Some(Duration::from_millis(30_250)),
    };
    run.nodes[1].phase = NodePhase::Failed;
    run.nodes[1].last_error = "agent at http://10.0.0.2:7400: disk full".into();
    run.update_time = at(T0 + 6);
    catalog.save_run(&run).await.expect("save");
    reads_back(run.clone()).await;

    run.state = RunState::Failed;
    run.error = "node 10.0.0.2 failed: disk full".into();
    run.finish_time = Some(at(T0 + 9));
    run.update_time = at(T0 + 9);
    run.backup_id = None;
    run.nodes[0].phase = NodePhase::Canceled;
    run.nodes[0].counters.eta = None;
    run.nodes[0].counters.rate_bytes_per_second = 0;
    catalog.save_run(&run).await.expect("save");
    reads_back(run.clone()).await;

    // Parameters are written once, at insert: a save does not rewrite them.
    let mut altered = run.clone();
    altered.dry_run = true;
    altered.idempotency_key = Some("late".into());
    if let RunSpec::Backup(spec) = &mut altered.spec {
        spec.kind = BackupKind::Incremental;
    }
    catalog.save_run(&altered).await.expect("save");
    reads_back(run).await;
}

/// One active run per cluster: another is FAILED_PRECONDITION naming the first (and not
/// recorded) while it is queued, running or canceling; other clusters are independent;
/// once it ended, the next run is recorded.
async fn a_cluster_has_at_most_one_active_run(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7400).await;
    let other = insert_cluster(catalog, "other", 7401).await;
    let location = insert_location(catalog, "local").await;
    let mut first = backup_run(&cluster, &location, T0);
    catalog.insert_run(&first).await.expect("insert");
    for state in [RunState::Queued, RunState::Running, RunState::Canceling] {
        set_state(catalog, &mut first, state).await;
        let second = restore_run(&cluster, &location, T0 + 1);
        match catalog.insert_run(&second).await {
            Err(Error::FailedPrecondition(message)) => {
                assert!(
                    message.contains(&first.id.to_string()),
                    "names the run: {message}"
                );
                assert!(message.contains(state.as_str()), "{message}");
            }
            other => panic!("a second run while one is {state:?}, got {other:?}"),
        }
        assert_eq!(catalog.get_run(second.id).await.expect("get"), None);
    }
    catalog
        .insert_run(&backup_run(&other, &location, T0 + 2))
        .await
        .expect("another cluster's run is independent");
    set_state(catalog, &mut first, RunState::Canceled).await;
    let next = backup_run(&cluster, &location, T0 + 3);
    assert_eq!(
        catalog.insert_run(&next).await.expect("insert"),
        RunInsert::Inserted
    );
    assert_eq!(
        catalog
            .active_run(cluster.id)
            .await
            .expect("active")
            .map(|a| a.id),
        Some(next.id)
    );
}

/// A reused idempotency key with the same parameters answers the first run (also while
/// it is active, and after it ended), with other parameters or another dry-run setting
/// ALREADY_EXISTS; keys are per cluster.
async fn idempotency_keys_return_the_first_run(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7400).await;
    let other = insert_cluster(catalog, "other", 7401).await;
    let location = insert_location(catalog, "local").await;
    let keyed = |cluster: &Cluster, create_ms: u64| Run {
        idempotency_key: Some("key-1".into()),
        ..backup_run(cluster, &location, create_ms)
    };
    let mut first = keyed(&cluster, T0);
    catalog.insert_run(&first).await.expect("insert");
    let retry = keyed(&cluster, T0 + 1);
    assert_eq!(
        catalog.insert_run(&retry).await.expect("retry"),
        RunInsert::Existing(first.id)
    );
    assert_eq!(catalog.get_run(retry.id).await.expect("get"), None);

    let other_parameters = Run {
        spec: restore_run(&cluster, &location, T0 + 2).spec,
        ..keyed(&cluster, T0 + 2)
    };
    let other_dry_run = Run {
        dry_run: true,
        ..keyed(&cluster, T0 + 3)
    };
    for refused in [&other_parameters, &other_dry_run] {
        match catalog.insert_run(refused).await {
            Err(Error::AlreadyExists(message)) => {
                assert!(message.contains(&first.id.to_string()), "{message}");
                assert!(message.contains("key-1"), "{message}");
            }
            other => panic!("a reused key with other parameters, got {other:?}"),
        }
    }

    set_state(catalog, &mut first, RunState::Succeeded).await;
    assert_eq!(
        catalog
            .insert_run(&keyed(&cluster, T0 + 4))
            .await
            .expect("retry after the end"),
        RunInsert::Existing(first.id)
    );
    assert_eq!(
        catalog
            .insert_run(&keyed(&other, T0 + 5))
            .await
            .expect("insert"),
        RunInsert::Inserted
    );
    assert_eq!(catalog.list_runs(&all()).await.expect("list").0.len(), 2);
}

/// A run refers to a known cluster and location: otherwise NOT_FOUND, nothing recorded.
async fn a_run_refers_to_a_known_cluster_and_location(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7400).await;
    let location = insert_location(catalog, "local").await;
    let ghost_location = super::fs_location("ghost");
    let ghost_cluster = super::cluster("ghost", vec![node("10.9.9.9", 1, "", "")]);
    for refused in [
        backup_run(&cluster, &ghost_location, T0),
        backup_run(&ghost_cluster, &location, T0),
    ] {
        assert!(
            matches!(
                catalog.insert_run(&refused).await,
                Err(Error::NotFound { .. })
            ),
            "a dangling reference is NOT_FOUND"
        );
    }
    assert!(catalog.list_runs(&all()).await.expect("list").0.is_empty());
    assert_eq!(catalog.active_run(cluster.id).await.expect("active"), None);
}

/// Newest first by create time, ties by id (descending); cursors resume after the last
/// run of a page and the last page says no more follow, also when exactly full.
async fn runs_are_listed_newest_first_a_page_at_a_time(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7400).await;
    let location = insert_location(catalog, "local").await;
    let mut written = Vec::new();
    // Three runs share one create millisecond: only the id orders them.
    for create in [T0 + 30, T0 + 10, T0 + 20, T0 + 20, T0 + 20, T0 + 40, T0] {
        written.push(
            record(
                catalog,
                backup_run(&cluster, &location, create),
                RunState::Succeeded,
            )
            .await,
        );
    }
    let mut expected: Vec<&Run> = written.iter().collect();
    expected.sort_by_key(|r| std::cmp::Reverse((r.create_time, r.id)));
    let expected = ids(&expected);
    for page_size in [1, 2, 3, 7, 100] {
        let pages = all_pages(catalog, ListRuns { page_size, ..all() }).await;
        assert_eq!(pages.concat(), expected, "page size {page_size}");
        assert_eq!(
            pages.len(),
            7usize.div_ceil(page_size as usize),
            "page size {page_size}"
        );
    }
    let (listed, _) = catalog.list_runs(&all()).await.expect("list");
    assert_eq!(
        listed.iter().find(|r| r.id == written[0].id),
        Some(&written[0]),
        "listed runs are whole"
    );
}

/// Each filter narrows the listing; states match any of those given; time bounds are
/// inclusive.
async fn the_run_listing_filters_by_cluster_kind_state_and_time(catalog: &Catalog) {
    let prod = insert_cluster(catalog, "prod", 7400).await;
    let dev = insert_cluster(catalog, "dev", 7401).await;
    let location = insert_location(catalog, "local").await;
    let a = record(
        catalog,
        backup_run(&prod, &location, T0 + 10),
        RunState::Succeeded,
    )
    .await;
    let b = record(
        catalog,
        restore_run(&prod, &location, T0 + 20),
        RunState::Failed,
    )
    .await;
    let c = record(
        catalog,
        backup_run(&dev, &location, T0 + 30),
        RunState::Canceled,
    )
    .await;
    let d = record(
        catalog,
        backup_run(&prod, &location, T0 + 40),
        RunState::Running,
    )
    .await;
    let listed = |query: ListRuns| async move {
        all_pages(
            catalog,
            ListRuns {
                page_size: 2,
                ..query
            },
        )
        .await
        .concat()
    };
    assert_eq!(listed(all()).await, ids(&[&d, &c, &b, &a]));
    assert_eq!(
        listed(ListRuns {
            cluster_id: Some(prod.id),
            ..all()
        })
        .await,
        ids(&[&d, &b, &a])
    );
    assert_eq!(
        listed(ListRuns {
            kind: Some(RunKind::Restore),
            ..all()
        })
        .await,
        ids(&[&b])
    );
    assert_eq!(
        listed(ListRuns {
            kind: Some(RunKind::Backup),
            cluster_id: Some(prod.id),
            ..all()
        })
        .await,
        ids(&[&d, &a])
    );
    assert_eq!(
        listed(ListRuns {
            states: vec![RunState::Running],
            ..all()
        })
        .await,
        ids(&[&d])
    );
    assert_eq!(
        listed(ListRuns {
            states: vec![RunState::Failed, RunState::Canceled, RunState::Succeeded],
            ..all()
        })
        .await,
        ids(&[&c, &b, &a])
    );
    assert!(
        listed(ListRuns {
            states: vec![RunState::Queued],
            ..all()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        listed(ListRuns {
            min_create_ms: Some(ms_of(b.create_time)),
            ..all()
        })
        .await,
        ids(&[&d, &c, &b])
    );
    assert_eq!(
        listed(ListRuns {
            max_create_ms: Some(ms_of(c.create_time)),
            ..all()
        })
        .await,
        ids(&[&c, &b, &a])
    );
    assert_eq!(
        listed(ListRuns {
            min_create_ms: Some(ms_of(b.create_time)),
            max_create_ms: Some(ms_of(b.create_time)),
            ..all()
        })
        .await,
        ids(&[&b])
    );
    assert!(
        listed(ListRuns {
            cluster_id: Some(Uuid::now_v7()),
            ..all()
        })
        .await
        .is_empty()
    );
}

/// What start-up recovery reads: every queued, running or canceling run of every
/// cluster, oldest first, whole; runs that ended are not in flight.
async fn runs_in_flight_are_the_active_runs_of_every_cluster_oldest_first(catalog: &Catalog) {
    let location = insert_location(catalog, "local").await;
    let mut clusters = Vec::new();
    for (port, cluster_name) in ["a", "b", "c", "d"].into_iter().enumerate() {
        clusters.push(insert_cluster(catalog, cluster_name, 7400 + port as u16).await);
    }
    assert!(
        catalog
            .runs_in_flight()
            .await
            .expect("in flight")
            .is_empty()
    );
    let _ended = record(
        catalog,
        backup_run(&clusters[0], &location, T0),
        RunState::Succeeded,
    )
    .await;
    let running = record(
        catalog,
        backup_run(&clusters[0], &location, T0 + 30),
        RunState::Running,
    )
    .await;
    let queued = record(
        catalog,
        restore_run(&clusters[1], &location, T0 + 10),
        RunState::Queued,
    )
    .await;
    let canceling = record(
        catalog,
        backup_run(&clusters[2], &location, T0 + 20),
        RunState::Canceling,
    )
    .await;
    let _failed = record(
        catalog,
        backup_run(&clusters[3], &location, T0 + 5),
        RunState::Failed,
    )
    .await;

    let in_flight = catalog.runs_in_flight().await.expect("in flight");
    assert_eq!(in_flight, vec![queued, canceling, running.clone()]);

    // Recovery finishes a run by saving it final: then it is no longer in flight.
    let mut recovered = running;
    recovered.error = "the server stopped during the run; nothing was committed".into();
    recovered
        .nodes
        .iter_mut()
        .for_each(|node| node.phase = NodePhase::Failed);
    set_state(catalog, &mut recovered, RunState::Failed).await;
    let in_flight = catalog.runs_in_flight().await.expect("in flight");
    assert_eq!(in_flight.len(), 2);
    assert!(in_flight.iter().all(|run| run.id != recovered.id));
    assert_eq!(
        catalog.get_run(recovered.id).await.expect("get"),
        Some(recovered)
    );
}

/// A validate run keeps its spec and its result (saved with every transition), runs beside a
/// backup but alone among validations, and its listing answers what is missing, damaged,
/// orphaned and due for verification.
async fn a_validate_run_keeps_its_result_and_its_listing_answers(catalog: &Catalog) {
    use crate::catalog::{ListedCounts, ListedReference};
    use crate::model::validation::{
        BackupValidation, Depth, Thoroughness, ValidateSpec, ValidationResult,
    };
    let cluster = insert_cluster(catalog, "prod", 7700).await;
    let location = insert_location(catalog, "vault").await;
    let mut run = backup_run(&cluster, &location, T0);
    run.kind = RunKind::Validate;
    run.spec = RunSpec::Validate(ValidateSpec {
        location_id: location.id,
        location_name: location.name.to_string(),
        thoroughness: Thoroughness::new(Depth::Deep, 50).expect("valid"),
    });
    run.backup_id = None;
    run.nodes = Vec::new();
    catalog.insert_run(&run).await.expect("insert");
    let beside = backup_run(&cluster, &location, T0 + 1);
    catalog
        .insert_run(&beside)
        .await
        .expect("a backup runs beside a validation");
    let mut second = run.clone();
    second.id = Uuid::now_v7();
    assert!(matches!(
        catalog.insert_run(&second).await,
        Err(Error::FailedPrecondition(_))
    ));

    let hash = |c: &str| c.repeat(64);
    catalog
        .add_listed_objects(
            run.id,
            &[
                (hash("a"), 10),
                (hash("b"), 20),
                (hash("d"), 30),
                (hash("e"), 40),
            ],
        )
        .await
        .expect("listed");
    let found = catalog
        .mark_referenced(run.id, &[hash("a"), hash("c"), hash("d"), hash("e")])
        .await
        .expect("referenced");
    let sizes: Vec<Option<u64>> = found.iter().map(|f| f.stored_size).collect();
    assert_eq!(sizes, [Some(10), None, Some(30), Some(40)]);
    catalog
        .record_missing(run.id, &[hash("c")])
        .await
        .expect("missing");
    catalog
        .record_damage(run.id, &[(hash("e"), "truncated".into())])
        .await
        .expect("damage");
    // Found again by a second pass: still missing, now damaged.
    let again = catalog
        .mark_referenced(run.id, &[hash("c"), hash("e")])
        .await
        .expect("again");
    assert_eq!(
        again,
        [
            ListedReference {
                hash: hash("c"),
                stored_size: None,
                damage: None
            },
            ListedReference {
                hash: hash("e"),
                stored_size: Some(40),
                damage: Some("truncated".into())
            },
        ]
    );
    assert_eq!(
        catalog.listed_object_counts(run.id).await.expect("counts"),
        ListedCounts {
            referenced: 3,
            missing: 1,
            orphaned: 1,
            orphaned_bytes: 20,
            damaged: 1,
        }
    );

    // Verification: only referenced, present, undamaged objects (a, d), never verified first.
    catalog
        .record_verified(run.id, cluster.id, location.id, &[hash("a")], &[], 1_000)
        .await
        .expect("verified a");
    assert_eq!(
        catalog
            .never_verified_count(run.id, cluster.id, location.id)
            .await
            .expect("never"),
        2,
        "d and e"
    );
    let chosen = catalog
        .choose_objects_to_verify(run.id, cluster.id, location.id, 1)
        .await
        .expect("choose");
    assert_eq!(chosen, 1);
    let page = catalog
        .objects_to_verify(run.id, "", 10)
        .await
        .expect("to verify");
    assert_eq!(page, [(hash("d"), 30)], "the never verified one first");
    catalog
        .record_verified(
            run.id,
            cluster.id,
            location.id,
            &[hash("d")],
            &[(hash("a"), "rotten".into())],
            2_000,
        )
        .await
        .expect("verified d");
    assert_eq!(
        catalog
            .listed_object_counts(run.id)
            .await
            .expect("counts")
            .damaged,
        2
    );
    // A verification of an object the listing no longer holds goes.
    catalog
        .record_verified(run.id, cluster.id, location.id, &[hash("z")], &[], 3_000)
        .await
        .expect("verified z");
    assert_eq!(
        catalog
            .forget_unlisted_verifications(run.id, cluster.id, location.id)
            .await
            .expect("forget"),
        1
    );

    run.validation = Some(ValidationResult {
        objects_listed: 4,
        objects_referenced: 4,
        objects_missing: 1,
        objects_orphaned: 1,
        orphaned_bytes: 20,
        backups: vec![BackupValidation {
            backup_id: Uuid::now_v7(),
            restorable: false,
            files_checked: 3,
            missing_objects: 1,
            affected_files: vec!["node:/data/f (object ccc missing)".into()],
            error: String::new(),
            damaged_objects: 1,
        }],
        objects_damaged: 2,
        objects_to_verify: 1,
        objects_verified: 1,
        bytes_verified: 30,
        objects_never_verified: 1,
    });
    set_state(catalog, &mut run, RunState::Succeeded).await;
    let read = catalog
        .get_run(run.id)
        .await
        .expect("get")
        .expect("the run");
    assert_eq!(read, run);
    catalog.clear_listed_objects(run.id).await.expect("clear");
    assert_eq!(
        catalog.listed_object_counts(run.id).await.expect("counts"),
        ListedCounts::default()
    );
}

catalog_tests!(
    a_validate_run_keeps_its_result_and_its_listing_answers,
    a_backup_run_round_trips_every_field,
    a_restore_run_round_trips_every_field,
    transitions_and_progress_are_saved_whole,
    a_cluster_has_at_most_one_active_run,
    idempotency_keys_return_the_first_run,
    a_run_refers_to_a_known_cluster_and_location,
    runs_are_listed_newest_first_a_page_at_a_time,
    the_run_listing_filters_by_cluster_kind_state_and_time,
    runs_in_flight_are_the_active_runs_of_every_cluster_oldest_first,
);
