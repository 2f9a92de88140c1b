//! Committed backups: recording (guarded by the run's state), every field's round trip,
//! listing with filters and cursors, the parent and point-in-time lookups, and deletion.
//!
//! A backup's file listing is not in the catalog: it is read from the node manifests in
//! storage, through an agent, so it is tested end to end.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{
    T0, backup_record, backup_run, insert_cluster, insert_location, ms_of, node, record_backup,
    set_state,
};
use crate::catalog::Catalog;
use crate::error::Error;
use crate::model::backup::{BackupNodeRecord, BackupRecord, ListBackups};
use crate::model::run::{BackupKind, PathFilter, RunState};

fn all() -> ListBackups {
    ListBackups {
        page_size: 1000,
        ..ListBackups::default()
    }
}

/// The ids of a listing, newest first, following the `more` flag with cursors made as the
/// backup service makes them (start ms and id of the last backup of the page).
async fn all_pages(catalog: &Catalog, query: ListBackups) -> Vec<Vec<Uuid>> {
    let mut query = query;
    let mut pages = Vec::new();
    loop {
        let (items, more) = catalog.list_backups(&query).await.expect("list backups");
        assert!(items.len() <= query.page_size as usize);
        pages.push(items.iter().map(|backup| backup.id).collect());
        if !more {
            return pages;
        }
        let last = items.last().expect("a page followed by more is not empty");
        let after = Some((ms_of(last.start_time), last.id));
        // A cursor that does not move past its page would page forever.
        assert_ne!(after, query.after, "the cursor moves forward");
        query.after = after;
        assert!(pages.len() <= 1000, "paging ends");
    }
}

fn ids(backups: &[&BackupRecord]) -> Vec<Uuid> {
    backups.iter().map(|backup| backup.id).collect()
}

/// Every field comes back, nodes in the order written (not by id), the cluster and
/// location names from their records, counters beyond 32 bits intact.
async fn a_backup_round_trips_every_field(catalog: &Catalog) {
    let cluster = super::cluster(
        "prod",
        vec![
            node("10.0.0.2", 7400, "dc1", "r1"),
            node("10.0.0.1", 7400, "dc1", "r1"),
            node("10.0.0.3", 7400, "dc1", "r1"),
        ],
    );
    catalog
        .insert_cluster(&cluster)
        .await
        .expect("insert cluster");
    let location = insert_location(catalog, "local").await;
    let parent = record_backup(catalog, &cluster, &location, T0).await;
    let mut run = backup_run(&cluster, &location, T0 + 1000);
    catalog.insert_run(&run).await.expect("insert run");
    set_state(catalog, &mut run, RunState::Running).await;

    let mut backup = backup_record(&cluster, &location, T0 + 1000, Some(run.id));
    backup.id = run.backup_id.expect("backup runs name their backup");
    backup.kind = BackupKind::Incremental;
    backup.parent_backup_id = Some(parent.id);
    backup.filter = PathFilter {
        include: vec!["/var/lib/**".into(), "/srv/*.db".into()],
        exclude: vec!["**/tmp/**".into()],
    };
    backup.labels = BTreeMap::from([
        ("env".into(), "prod".into()),
        ("ticket".into(), "ops-1".into()),
    ]);
    backup.schedule_id = Some(Uuid::now_v7());
    // Neither by id nor by address: the order written is the order read.
    backup.nodes.sort_by_key(|n| std::cmp::Reverse(n.node_id));
    backup.nodes.swap(1, 2);
    backup.nodes[0] = BackupNodeRecord {
        file_count: 1 << 33,
        total_bytes: 5 << 40,
        uploaded_bytes: 0,
        uploaded_objects: 123_456_789,
        manifest_path: "clusters/x/backups/y/nodes/z.manifest".into(),
        ..backup.nodes[0].clone()
    };
    catalog.record_backup(&backup).await.expect("record");

    assert_eq!(
        catalog.get_backup(backup.id).await.expect("get"),
        Some(backup.clone())
    );
    assert_eq!(
        catalog.get_backup(parent.id).await.expect("get"),
        Some(parent)
    );
    assert_eq!(catalog.get_backup(Uuid::now_v7()).await.expect("get"), None);
    let (listed, _) = catalog.list_backups(&all()).await.expect("list");
    assert_eq!(listed.first(), Some(&backup), "listed backups are whole");
}

/// A backup counts only while its run is running: a cancel that won the race (canceling),
/// an ended run or an unknown run refuse it, and nothing is recorded.
async fn a_backup_is_recorded_only_while_its_run_is_running(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7400).await;
    let location = insert_location(catalog, "local").await;
    let mut run = backup_run(&cluster, &location, T0);
    catalog.insert_run(&run).await.expect("insert run");
    for state in [RunState::Queued, RunState::Canceling, RunState::Canceled] {
        set_state(catalog, &mut run, state).await;
        let backup = backup_record(&cluster, &location, T0, Some(run.id));
        match catalog.record_backup(&backup).await {
            Err(Error::FailedPrecondition(message)) => {
                assert!(message.contains(&run.id.to_string()), "{message}");
                assert!(message.contains(state.as_str()), "{message}");
            }
            other => panic!("recording for a {state:?} run, got {other:?}"),
        }
        assert_eq!(catalog.get_backup(backup.id).await.expect("get"), None);
    }
    let orphan = backup_record(&cluster, &location, T0, Some(Uuid::now_v7()));
    match catalog.record_backup(&orphan).await {
        Err(Error::FailedPrecondition(message)) => {
            assert!(message.contains("missing"), "{message}")
        }
        other => panic!("recording for an unknown run, got {other:?}"),
    }
    assert!(
        catalog
            .list_backups(&all())
            .await
            .expect("list")
            .0
            .is_empty()
    );
}

/// Unknown clusters and locations are NOT_FOUND, a recorded id ALREADY_EXISTS; none of
/// them leaves a partial record behind.
async fn a_backup_refers_to_a_known_cluster_and_location_and_is_recorded_once(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7400).await;
    let location = insert_location(catalog, "local").await;
    let mut no_cluster = backup_record(&cluster, &location, T0, None);
    no_cluster.cluster_id = Uuid::now_v7();
    let mut no_location = backup_record(&cluster, &location, T0, None);
    no_location.location_id = Uuid::now_v7();
    for refused in [&no_cluster, &no_location] {
        assert!(
            matches!(
                catalog.record_backup(refused).await,
                Err(Error::NotFound { .. })
            ),
            "a dangling reference is NOT_FOUND"
        );
        assert_eq!(catalog.get_backup(refused.id).await.expect("get"), None);
    }
    let backup = record_backup(catalog, &cluster, &location, T0).await;
    let again = BackupRecord {
        commit_time: super::at(T0 + 9999),
        ..backup.clone()
    };
    assert!(matches!(
        catalog.record_backup(&again).await,
        Err(Error::AlreadyExists(_))
    ));
    assert_eq!(
        catalog.get_backup(backup.id).await.expect("get"),
        Some(backup)
    );
    assert!(catalog.list_backups(&all()).await.expect("list").0.len() == 1);
}

/// Newest first by start time, ties by id (descending); pages resume after the last
/// backup of the page, the last page says no more follow, also when exactly full.
async fn backups_are_listed_newest_first_a_page_at_a_time(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7400).await;
    let location = insert_location(catalog, "local").await;
    let mut written = Vec::new();
    // Three backups share one start millisecond: only the id orders them.
    for start in [T0 + 30, T0 + 10, T0 + 20, T0 + 20, T0 + 20, T0 + 40, T0] {
        written.push(record_backup(catalog, &cluster, &location, start).await);
    }
    let mut expected: Vec<&BackupRecord> = written.iter().collect();
    expected.sort_by_key(|b| std::cmp::Reverse((b.start_time, b.id)));
    let expected = ids(&expected);

    for page_size in [1, 2, 3, 7, 100] {
        let pages = all_pages(catalog, ListBackups { page_size, ..all() }).await;
        assert_eq!(pages.concat(), expected, "page size {page_size}");
        let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
        let full = 7usize.div_ceil(page_size as usize);
        assert_eq!(sizes.len(), full, "page size {page_size}: {sizes:?}");
    }
}

/// Each filter narrows the listing; time bounds are inclusive; labels must all match.
async fn the_backup_listing_filters_by_cluster_location_kind_time_and_labels(catalog: &Catalog) {
    let prod = insert_cluster(catalog, "prod", 7400).await;
    let dev = insert_cluster(catalog, "dev", 7401).await;
    let local = insert_location(catalog, "local").await;
    let remote = insert_location(catalog, "remote").await;
    let record = |cluster, location, start, kind, labels: &[(&str, &str)]| {
        let mut backup = backup_record(cluster, location, start, None);
        backup.kind = kind;
        backup.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        backup
    };
    let backups = [
        record(
            &prod,
            &local,
            T0 + 10,
            BackupKind::Full,
            &[("env", "prod"), ("tier", "gold")],
        ),
        record(
            &prod,
            &remote,
            T0 + 20,
            BackupKind::Incremental,
            &[("env", "prod")],
        ),
        record(&dev, &local, T0 + 30, BackupKind::Full, &[("env", "dev")]),
        record(&prod, &local, T0 + 40, BackupKind::Incremental, &[]),
    ];
    for backup in &backups {
        catalog.record_backup(backup).await.expect("record");
    }
    let [a, b, c, d] = &backups;
    let listed = |query: ListBackups| async move {
        all_pages(
            catalog,
            ListBackups {
                page_size: 2,
                ..query
            },
        )
        .await
        .concat()
    };
    assert_eq!(
        listed(ListBackups {
            cluster_id: Some(prod.id),
            ..all()
        })
        .await,
        ids(&[d, b, a])
    );
    assert_eq!(
        listed(ListBackups {
            location_id: Some(local.id),
            ..all()
        })
        .await,
        ids(&[d, c, a])
    );
    assert_eq!(
        listed(ListBackups {
            cluster_id: Some(prod.id),
            location_id: Some(local.id),
            ..all()
        })
        .await,
        ids(&[d, a])
    );
    assert_eq!(
        listed(ListBackups {
            kind: Some(BackupKind::Full),
            ..all()
        })
        .await,
        ids(&[c, a])
    );
    assert_eq!(
        listed(ListBackups {
            min_start_ms: Some(ms_of(b.start_time)),
            ..all()
        })
        .await,
        ids(&[d, c, b])
    );
    assert_eq!(
        listed(ListBackups {
            max_start_ms: Some(ms_of(c.start_time)),
            ..all()
        })
        .await,
        ids(&[c, b, a])
    );
    assert_eq!(
        listed(ListBackups {
            min_start_ms: Some(ms_of(b.start_time)),
            max_start_ms: Some(ms_of(c.start_time)),
            ..all()
        })
        .await,
        ids(&[c, b])
    );
    let with = |pairs: &[(&str, &str)]| ListBackups {
        labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..all()
    };
    assert_eq!(listed(with(&[("env", "prod")])).await, ids(&[b, a]));
    assert_eq!(
        listed(with(&[("env", "prod"), ("tier", "gold")])).await,
        ids(&[a])
    );
    assert!(listed(with(&[("env", "qa")])).await.is_empty());
    assert!(
        listed(ListBackups {
            cluster_id: Some(Uuid::now_v7()),
            ..all()
        })
        .await
        .is_empty()
    );
}

/// The parent of an incremental backup is the newest of the cluster in that location; a
/// point-in-time restore takes the newest that started at or before the time.
async fn the_latest_backup_and_the_backup_at_a_time_are_found(catalog: &Catalog) {
    let prod = insert_cluster(catalog, "prod", 7400).await;
    let dev = insert_cluster(catalog, "dev", 7401).await;
    let local = insert_location(catalog, "local").await;
    let remote = insert_location(catalog, "remote").await;
    assert_eq!(
        catalog
            .latest_backup(prod.id, local.id)
            .await
            .expect("latest"),
        None
    );
    let old = record_backup(catalog, &prod, &local, T0 + 10).await;
    let newer_remote = record_backup(catalog, &prod, &remote, T0 + 20).await;
    let new = record_backup(catalog, &prod, &local, T0 + 30).await;
    let other_cluster = record_backup(catalog, &dev, &local, T0 + 40).await;

    assert_eq!(
        catalog
            .latest_backup(prod.id, local.id)
            .await
            .expect("latest"),
        Some(new.clone())
    );
    assert_eq!(
        catalog
            .latest_backup(prod.id, remote.id)
            .await
            .expect("latest"),
        Some(newer_remote.clone())
    );
    assert_eq!(
        catalog
            .latest_backup(dev.id, local.id)
            .await
            .expect("latest"),
        Some(other_cluster)
    );
    assert_eq!(
        catalog
            .latest_backup(dev.id, remote.id)
            .await
            .expect("latest"),
        None
    );

    let at = |ms: u64, location: Option<Uuid>| catalog.backup_at(prod.id, location, ms as i64);
    assert_eq!(at(T0 + 9, None).await.expect("at"), None);
    assert_eq!(
        at(T0 + 10, None).await.expect("at"),
        Some(old.clone()),
        "the bound is inclusive"
    );
    assert_eq!(
        at(T0 + 29, None).await.expect("at"),
        Some(newer_remote.clone())
    );
    assert_eq!(at(T0 + 29, Some(local.id)).await.expect("at"), Some(old));
    assert_eq!(
        at(T0 + 1_000_000, None).await.expect("at"),
        Some(new.clone())
    );
    assert_eq!(
        at(T0 + 1_000_000, Some(remote.id)).await.expect("at"),
        Some(newer_remote)
    );
    assert_eq!(at(T0 + 30, Some(local.id)).await.expect("at"), Some(new));
}

/// Deleting removes the record and its nodes (the id can be recorded again); an unknown
/// id is NOT_FOUND; a backup an active run writes or reads is FAILED_PRECONDITION.
async fn deleting_a_backup_removes_its_record(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7400).await;
    let location = insert_location(catalog, "local").await;
    let backup = record_backup(catalog, &cluster, &location, T0).await;
    let kept = record_backup(catalog, &cluster, &location, T0 + 1).await;

    let mut run = backup_run(&cluster, &location, T0 + 100);
    run.backup_id = Some(backup.id);
    catalog.insert_run(&run).await.expect("insert run");
    set_state(catalog, &mut run, RunState::Running).await;
    match catalog.delete_backup(backup.id).await {
        Err(Error::FailedPrecondition(message)) => {
            assert!(message.contains(&run.id.to_string()), "{message}")
        }
        other => panic!("deleting a backup in use is FAILED_PRECONDITION, got {other:?}"),
    }
    assert_eq!(
        catalog.get_backup(backup.id).await.expect("get"),
        Some(backup.clone())
    );

    set_state(catalog, &mut run, RunState::Succeeded).await;
    catalog.delete_backup(backup.id).await.expect("delete");
    assert_eq!(catalog.get_backup(backup.id).await.expect("get"), None);
    let (listed, more) = catalog.list_backups(&all()).await.expect("list");
    assert_eq!(listed, vec![kept]);
    assert!(!more);
    assert_eq!(
        catalog
            .latest_backup(cluster.id, location.id)
            .await
            .expect("latest")
            .map(|b| b.start_time),
        Some(super::at(T0 + 1))
    );
    match catalog.delete_backup(backup.id).await {
        Err(Error::NotFound {
            kind: "backup",
            name,
        }) => assert_eq!(name, backup.id.to_string()),
        other => panic!("deleting twice is NOT_FOUND, got {other:?}"),
    }
    catalog
        .record_backup(&backup)
        .await
        .expect("its node records went with it");
    assert_eq!(
        catalog.get_backup(backup.id).await.expect("get"),
        Some(backup)
    );
}

catalog_tests!(
    a_backup_round_trips_every_field,
    a_backup_is_recorded_only_while_its_run_is_running,
    a_backup_refers_to_a_known_cluster_and_location_and_is_recorded_once,
    backups_are_listed_newest_first_a_page_at_a_time,
    the_backup_listing_filters_by_cluster_location_kind_time_and_labels,
    the_latest_backup_and_the_backup_at_a_time_are_found,
    deleting_a_backup_removes_its_record,
);
