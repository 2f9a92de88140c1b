//! Locations: every kind's options and compression round trip, unique names, listing, changes
//! and deletion, and the guards that runs and stored backups put on them.

use uuid::Uuid;

use super::{
    T0, at, backup_run, fs_location, insert_cluster, insert_location, name, record_backup,
    set_state,
};
use crate::catalog::Catalog;
use crate::error::Error;
use crate::model::Name;
use crate::model::location::{Compression, Location, LocationOptions, SecretRef};
use crate::model::page::Cursor;
use crate::model::run::{RunSpec, RunState};

/// One location of each kind, with every option set to something distinct (secrets by
/// reference, both kinds of reference), and each compression setting.
fn one_of_each_kind() -> Vec<Location> {
    let with = |location_name: &str, options: LocationOptions, compression: Compression| Location {
        options,
        compression,
        ..fs_location(location_name)
    };
    vec![
        with(
            "local",
            LocationOptions::Fs {
                path: "/mnt/backups/coffer".into(),
            },
            Compression::None,
        ),
        with(
            "s3-eu",
            LocationOptions::S3 {
                bucket: "bucket-eu".into(),
                region: "eu-west-1".into(),
                endpoint: "http://127.0.0.1:8333".into(),
                prefix: "team/a".into(),
                force_path_style: true,
                access_key_id: Some(SecretRef::Env("AWS_ACCESS_KEY_ID".into())),
                secret_access_key: Some(SecretRef::File("/etc/coffer/s3-secret".into())),
                session_token: None,
            },
            Compression::zstd(-3).expect("level"),
        ),
        with(
            "azure",
            LocationOptions::Azblob {
                container: "backups".into(),
                endpoint: "https://acct.blob.core.windows.net".into(),
                account_name: "acct".into(),
                prefix: "p".into(),
                account_key: None,
                sas_token: Some(SecretRef::Env("AZURE_SAS".into())),
            },
            Compression::zstd(12).expect("level"),
        ),
        Location {
            // An encrypted location: the key's name round-trips too.
            encryption_key: Some(Name::parse("key", "site-key-2026").expect("key name")),
            ..with(
                "gcs",
                LocationOptions::Gcs {
                    bucket: "gcs-bucket".into(),
                    endpoint: String::new(),
                    prefix: String::new(),
                    credential: None,
                    anonymous: true,
                },
                Compression::DEFAULT,
            )
        },
    ]
}

/// Every location's names, following next-page tokens from the first page on.
async fn all_pages(catalog: &Catalog, page_size: u32, kind: Option<&str>) -> Vec<Vec<String>> {
    let mut after = None;
    let mut pages = Vec::new();
    loop {
        let page = catalog
            .list_locations(page_size, after.clone(), kind)
            .await
            .expect("list locations");
        assert!(page.items.len() <= page_size as usize);
        pages.push(page.items.iter().map(|l| l.name.to_string()).collect());
        match page.next_page_token {
            Some(token) => {
                let next = Cursor::parse_name("page_token", &token).expect("valid page token");
                assert!(next.is_some(), "a next-page token names a location");
                assert!(next > after, "the cursor moves forward");
                after = next;
            }
            None => return pages,
        }
        assert!(pages.len() <= 1000, "paging ends");
    }
}

/// Options (as JSON), kind, compression and times come back as written, by id and by name.
async fn every_kind_of_location_round_trips(catalog: &Catalog) {
    for location in one_of_each_kind() {
        catalog.insert_location(&location).await.expect("insert");
        assert_eq!(
            catalog
                .find_location(&location.id.to_string())
                .await
                .expect("find by id"),
            Some(location.clone())
        );
        assert_eq!(
            catalog
                .find_location(location.name.as_str())
                .await
                .expect("find by name"),
            Some(location)
        );
    }
    assert_eq!(catalog.find_location("nowhere").await.expect("find"), None);
    assert_eq!(
        catalog
            .find_location(&Uuid::now_v7().to_string())
            .await
            .expect("find"),
        None
    );
}

/// A taken name is ALREADY_EXISTS naming it; the refused location is not written.
async fn location_names_are_unique(catalog: &Catalog) {
    let first = insert_location(catalog, "local").await;
    let mut second = fs_location("local");
    second.options = LocationOptions::Fs {
        path: "/elsewhere".into(),
    };
    match catalog.insert_location(&second).await {
        Err(Error::AlreadyExists(message)) => {
            assert!(message.contains("\"local\""), "{message}")
        }
        other => panic!("a taken name is ALREADY_EXISTS, got {other:?}"),
    }
    assert_eq!(
        catalog
            .find_location(&second.id.to_string())
            .await
            .expect("find"),
        None
    );
    assert_eq!(
        catalog.find_location("local").await.expect("find"),
        Some(first)
    );
}

/// By name, a page at a time, optionally of one kind; the last page has no token.
async fn locations_are_listed_by_name_and_filtered_by_kind(catalog: &Catalog) {
    for location in one_of_each_kind() {
        catalog.insert_location(&location).await.expect("insert");
    }
    insert_location(catalog, "archive").await;
    let sorted = ["archive", "azure", "gcs", "local", "s3-eu"];
    let pages = all_pages(catalog, 2, None).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(pages.concat(), sorted);
    assert_eq!(
        all_pages(catalog, 5, None).await,
        [sorted.map(String::from).to_vec()]
    );
    assert_eq!(
        all_pages(catalog, 1, Some("fs")).await.concat(),
        ["archive", "local"]
    );
    assert_eq!(all_pages(catalog, 10, Some("s3")).await.concat(), ["s3-eu"]);
    assert_eq!(
        all_pages(catalog, 10, Some("azblob")).await.concat(),
        ["azure"]
    );
    assert!(
        all_pages(catalog, 10, Some("tape"))
            .await
            .concat()
            .is_empty()
    );

    let page = catalog
        .list_locations(10, Some(name("b")), None)
        .await
        .expect("list");
    assert_eq!(page.items.first().map(|l| l.name.as_str()), Some("gcs"));
    assert_eq!(page.items.len(), 3);
    // Listed locations are whole.
    let local = catalog.find_location("local").await.expect("find");
    assert_eq!(
        page.items.iter().find(|l| l.name.as_str() == "local"),
        local.as_ref()
    );
}

/// A change writes the new name, options, compression and update time; the create time
/// stays; the old name no longer finds it. A taken name is ALREADY_EXISTS.
async fn a_location_is_renamed_and_reconfigured(catalog: &Catalog) {
    let original = insert_location(catalog, "local").await;
    let other = insert_location(catalog, "other").await;
    let changed = Location {
        name: name("renamed"),
        options: LocationOptions::Fs {
            path: "/mnt/new".into(),
        },
        compression: Compression::None,
        encryption_key: None,
        update_time: at(T0 + 99),
        ..original.clone()
    };
    catalog
        .update_location(&changed, true)
        .await
        .expect("update");
    assert_eq!(
        catalog
            .find_location(&original.id.to_string())
            .await
            .expect("find"),
        Some(changed.clone())
    );
    assert_eq!(
        catalog.find_location("renamed").await.expect("find"),
        Some(changed.clone())
    );
    assert_eq!(catalog.find_location("local").await.expect("find"), None);

    let clash = Location {
        name: name("other"),
        ..changed.clone()
    };
    match catalog.update_location(&clash, false).await {
        Err(Error::AlreadyExists(message)) => {
            assert!(message.contains("\"other\""), "{message}")
        }
        other => panic!("renaming onto a taken name is ALREADY_EXISTS, got {other:?}"),
    }
    assert_eq!(
        catalog.find_location("renamed").await.expect("find"),
        Some(changed)
    );
    assert_eq!(
        catalog.find_location("other").await.expect("find"),
        Some(other)
    );
}

/// While a run uses a location it cannot change at all; once backups are stored there, it
/// cannot change where its data is (but may change anything else).
async fn runs_and_stored_backups_guard_location_changes(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7400).await;
    let location = insert_location(catalog, "local").await;
    let mut run = backup_run(&cluster, &location, T0 + 100);
    catalog.insert_run(&run).await.expect("insert run");
    set_state(catalog, &mut run, RunState::Running).await;

    let renamed = Location {
        name: name("renamed"),
        update_time: at(T0 + 200),
        ..location.clone()
    };
    for moves_data in [false, true] {
        match catalog.update_location(&renamed, moves_data).await {
            Err(Error::FailedPrecondition(message)) => {
                assert!(
                    message.contains(&run.id.to_string()),
                    "names the run: {message}"
                );
            }
            other => panic!("a change during a run is FAILED_PRECONDITION, got {other:?}"),
        }
    }
    assert_eq!(
        catalog.find_location("local").await.expect("find"),
        Some(location.clone())
    );

    record_backup(catalog, &cluster, &location, T0 + 50).await;
    set_state(catalog, &mut run, RunState::Failed).await;
    match catalog.update_location(&renamed, true).await {
        Err(Error::FailedPrecondition(message)) => {
            assert!(message.contains("1 backup"), "{message}")
        }
        other => panic!("moving data away from backups is FAILED_PRECONDITION, got {other:?}"),
    }
    assert_eq!(
        catalog.find_location("local").await.expect("find"),
        Some(location)
    );
    catalog
        .update_location(&renamed, false)
        .await
        .expect("a rename keeps the data in place");
    assert_eq!(
        catalog.find_location("renamed").await.expect("find"),
        Some(renamed)
    );
}

/// Deleting a location removes it and the records of the backups stored there, keeps the
/// runs that used it (they still name it in their spec), and is refused while a run uses it.
async fn deleting_a_location_removes_its_backup_records_and_keeps_runs(catalog: &Catalog) {
    let cluster = insert_cluster(catalog, "prod", 7400).await;
    let doomed = insert_location(catalog, "doomed").await;
    let kept = insert_location(catalog, "kept").await;
    let mut run = backup_run(&cluster, &doomed, T0 + 100);
    catalog.insert_run(&run).await.expect("insert run");
    set_state(catalog, &mut run, RunState::Running).await;
    let gone = record_backup(catalog, &cluster, &doomed, T0 + 10).await;
    let stays = record_backup(catalog, &cluster, &kept, T0 + 20).await;

    match catalog.delete_location(doomed.id, "doomed").await {
        Err(Error::FailedPrecondition(message)) => {
            assert!(
                message.contains(&run.id.to_string()),
                "names the run: {message}"
            );
        }
        other => panic!("deleting a location in use is FAILED_PRECONDITION, got {other:?}"),
    }
    assert_eq!(
        catalog.get_backup(gone.id).await.expect("get"),
        Some(gone.clone())
    );

    set_state(catalog, &mut run, RunState::Succeeded).await;
    catalog
        .delete_location(doomed.id, "doomed")
        .await
        .expect("delete");
    assert_eq!(catalog.find_location("doomed").await.expect("find"), None);
    match catalog.delete_location(doomed.id, "doomed").await {
        Err(Error::NotFound { kind, name }) => {
            assert_eq!((kind, name.as_str()), ("location", "doomed"))
        }
        other => panic!("deleting a deleted location is NOT_FOUND, got {other:?}"),
    }
    assert_eq!(catalog.get_backup(gone.id).await.expect("get"), None);
    assert_eq!(
        catalog.get_backup(stays.id).await.expect("get"),
        Some(stays)
    );
    let after = catalog
        .get_run(run.id)
        .await
        .expect("get run")
        .expect("the run stays");
    assert_eq!(after, run);
    assert!(matches!(&after.spec, RunSpec::Backup(spec) if spec.location_id == doomed.id));
    // The name is free again, and a new run of the cluster can use the new location.
    let again = insert_location(catalog, "doomed").await;
    catalog
        .insert_run(&backup_run(&cluster, &again, T0 + 300))
        .await
        .expect("a run into the new location");
}

catalog_tests!(
    every_kind_of_location_round_trips,
    location_names_are_unique,
    locations_are_listed_by_name_and_filtered_by_kind,
    a_location_is_renamed_and_reconfigured,
    runs_and_stored_backups_guard_location_changes,
    deleting_a_location_removes_its_backup_records_and_keeps_runs,
);
