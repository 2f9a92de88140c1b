//! Clusters and their nodes: registration, lookups, listing, changes, deletion and the guard
//! that active runs put on them.

use uuid::Uuid;

use super::{
    T0, at, backup_run, cluster, insert_cluster, insert_location, labels, name, node,
    record_backup, set_state,
};
use crate::catalog::ActiveRun;
use crate::catalog::Catalog;
use crate::error::Error;
use crate::model::page::Cursor;
use crate::model::run::RunState;
use crate::model::{ClusterUpdate, DataPath, LabelKey, Labels, ListClusters, NodeInfo};

/// A change that touches nothing yet; tests fill in what they change.
fn no_change(cluster: &str) -> ClusterUpdate {
    ClusterUpdate {
        cluster: cluster.into(),
        add_nodes: Vec::new(),
        remove_node_ids: Vec::new(),
        set_labels: Labels::default(),
        remove_labels: Vec::new(),
    }
}

fn list(page_size: u32, after: Option<&str>, with_labels: &[(&str, &str)]) -> ListClusters {
    ListClusters {
        page_size,
        after: after.map(name),
        labels: labels(with_labels),
    }
}

/// The names of every cluster, following next-page tokens from the first page on.
async fn all_pages(catalog: &Catalog, query: ListClusters) -> Vec<Vec<String>> {
    let mut query = query;
    let mut pages = Vec::new();
    loop {
        let page = catalog.list_clusters(&query).await.expect("list clusters");
        assert!(page.items.len() <= query.page_size as usize);
        pages.push(
            page.items
                .iter()
                .map(|cluster| cluster.name.to_string())
                .collect(),
        );
        match page.next_page_token {
            Some(token) => {
                let after = Cursor::parse_name("page_token", &token).expect("valid page token");
                assert!(after.is_some(), "a next-page token names a cluster");
                assert!(after > query.after, "the cursor moves forward");
                query.after = after;
            }
            None => return pages,
        }
        assert!(pages.len() <= 1000, "paging ends");
    }
}

/// Every field written comes back, by id and by name; nodes come back ordered by
/// datacenter, rack and address, whatever order they were given in.
async fn a_cluster_round_trips_every_field_found_by_id_or_name(catalog: &Catalog) {
    let nodes = vec![
        node("10.0.0.3", 7400, "dc2", "r1"),
        node("10.0.0.2", 7400, "dc1", "r2"),
        node("10.0.0.9", 7400, "dc1", "r1"),
        node("10.0.0.1", 7400, "dc1", "r1"),
    ];
    let written = cluster("prod", nodes.clone());
    catalog.insert_cluster(&written).await.expect("insert");

    let mut expected = written.clone();
    expected.nodes = vec![
        nodes[3].clone(),
        nodes[2].clone(),
        nodes[1].clone(),
        nodes[0].clone(),
    ];
    let by_id = catalog
        .find_cluster(&written.id.to_string())
        .await
        .expect("find by id");
    assert_eq!(by_id, Some(expected.clone()));
    let by_name = catalog.find_cluster("prod").await.expect("find by name");
    assert_eq!(by_name, Some(expected));

    assert_eq!(catalog.find_cluster("staging").await.expect("find"), None);
    assert_eq!(
        catalog
            .find_cluster(&Uuid::now_v7().to_string())
            .await
            .expect("find"),
        None
    );
    assert_eq!(catalog.find_cluster("").await.expect("find"), None);
}

/// A cluster without labels and with empty topology reads back as such (the JSON and
/// empty-string columns do not turn into something else).
async fn empty_labels_and_topology_round_trip(catalog: &Catalog) {
    let mut bare = cluster("bare", vec![node("h", 1, "", "")]);
    bare.labels = Labels::default();
    bare.nodes[0].info.data_paths.clear();
    catalog.insert_cluster(&bare).await.expect("insert");
    assert_eq!(
        catalog.find_cluster("bare").await.expect("find"),
        Some(bare)
    );
}

/// A taken name, node id or node address is ALREADY_EXISTS naming the cluster that has it,
/// and nothing of the refused cluster is written.
async fn names_node_ids_and_addresses_are_unique_across_clusters(catalog: &Catalog) {
    let first = cluster("first", vec![node("10.0.0.1", 7400, "dc1", "r1")]);
    catalog.insert_cluster(&first).await.expect("insert first");

    let same_name = cluster("first", vec![node("10.0.0.2", 7400, "dc1", "r1")]);
    match catalog.insert_cluster(&same_name).await {
        Err(Error::AlreadyExists(message)) => {
            assert!(message.contains("\"first\""), "{message}")
        }
        other => panic!("a taken name is ALREADY_EXISTS, got {other:?}"),
    }

    let mut same_node_id = cluster("second", vec![node("10.0.0.2", 7400, "dc1", "r1")]);
    same_node_id.nodes[0].info.node_id = first.nodes[0].info.node_id;
    let same_address = cluster(
        "third",
        vec![
            node("10.0.0.5", 7400, "dc1", "r1"),
            node("10.0.0.1", 7400, "dc1", "r1"),
        ],
    );
    for refused in [&same_node_id, &same_address] {
        match catalog.insert_cluster(refused).await {
            Err(Error::AlreadyExists(message)) => {
                assert!(message.contains("\"first\""), "names the owner: {message}");
                assert!(
                    message.contains(&first.nodes[0].info.node_id.to_string()),
                    "{message}"
                );
            }
            other => panic!("a claimed node is ALREADY_EXISTS, got {other:?}"),
        }
        assert_eq!(
            catalog
                .find_cluster(refused.name.as_str())
                .await
                .expect("find"),
            None
        );
        assert_eq!(
            catalog
                .find_cluster(&refused.id.to_string())
                .await
                .expect("find"),
            None
        );
    }
    // The node of the refused three-node cluster that was free is still free.
    catalog
        .insert_cluster(&cluster("fourth", vec![same_address.nodes[0].clone()]))
        .await
        .expect("the unclaimed node was not written by the refused insert");
    assert_eq!(
        catalog.find_cluster("first").await.expect("find"),
        Some(first)
    );
}

/// Pages by name: full pages carry a token that resumes right after their last cluster,
/// the last page carries none, also when it is exactly full.
async fn clusters_are_listed_by_name_a_page_at_a_time(catalog: &Catalog) {
    for (port, cluster_name) in [
        "delta", "alpha", "golf", "charlie", "foxtrot", "bravo", "echo",
    ]
    .into_iter()
    .enumerate()
    {
        insert_cluster(catalog, cluster_name, 7000 + port as u16).await;
    }
    let names = |pages: Vec<Vec<String>>| pages.into_iter().flatten().collect::<Vec<_>>();
    let sorted = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
    ];

    let pages = all_pages(catalog, list(3, None, &[])).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(names(pages), sorted);
    // A page exactly as large as what is left is the last one.
    assert_eq!(
        all_pages(catalog, list(7, None, &[])).await,
        [sorted.map(String::from).to_vec()]
    );
    assert_eq!(all_pages(catalog, list(1, None, &[])).await.len(), 7);
    assert_eq!(
        names(all_pages(catalog, list(1000, None, &[])).await),
        sorted
    );

    // `after` is exclusive, and need not be the name of an existing cluster.
    let page = catalog
        .list_clusters(&list(2, Some("charlie"), &[]))
        .await
        .expect("list");
    assert_eq!(
        page.items
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["delta", "echo"]
    );
    assert!(page.next_page_token.is_some());
    let page = catalog
        .list_clusters(&list(10, Some("cobalt"), &[]))
        .await
        .expect("list");
    assert_eq!(page.items.len(), 4);
    assert_eq!(page.items[0].name.as_str(), "delta");
    assert_eq!(page.next_page_token, None);
    let page = catalog
        .list_clusters(&list(10, Some("golf"), &[]))
        .await
        .expect("list");
    assert!(page.items.is_empty());
    assert_eq!(page.next_page_token, None);

    // Listed clusters carry their nodes.
    let page = catalog
        .list_clusters(&list(1, None, &[]))
        .await
        .expect("list");
    assert_eq!(
        Some(&page.items[0]),
        catalog.find_cluster("alpha").await.expect("find").as_ref()
    );
    assert_eq!(page.items[0].nodes.len(), 1);
}

/// A label filter keeps the clusters carrying every label asked for, with these values,
/// and pages like the plain listing.
async fn the_cluster_listing_keeps_clusters_with_all_labels_asked_for(catalog: &Catalog) {
    let with = |cluster_name: &str, port: u16, pairs: &[(&str, &str)]| {
        let mut c = cluster(cluster_name, vec![node("10.0.0.1", port, "", "")]);
        c.labels = labels(pairs);
        c
    };
    for c in [
        with("a-prod-eu", 1, &[("env", "prod"), ("region", "eu")]),
        with("b-prod-us", 2, &[("env", "prod"), ("region", "us")]),
        with("c-dev-eu", 3, &[("env", "dev"), ("region", "eu")]),
        with("d-prod", 4, &[("env", "prod")]),
        with(
            "e-prod-eu",
            5,
            &[("env", "prod"), ("region", "eu"), ("team/x.y", "z")],
        ),
    ] {
        catalog.insert_cluster(&c).await.expect("insert");
    }
    let names = |pages: Vec<Vec<String>>| pages.into_iter().flatten().collect::<Vec<_>>();
    assert_eq!(
        names(all_pages(catalog, list(100, None, &[("env", "prod")])).await),
        ["a-prod-eu", "b-prod-us", "d-prod", "e-prod-eu"]
    );
    assert_eq!(
        names(all_pages(catalog, list(1, None, &[("env", "prod"), ("region", "eu")])).await),
        ["a-prod-eu", "e-prod-eu"]
    );
    assert_eq!(
        names(all_pages(catalog, list(100, None, &[("team/x.y", "z")])).await),
        ["e-prod-eu"]
    );
    assert!(names(all_pages(catalog, list(100, None, &[("env", "qa")])).await).is_empty());
    // A value is compared as written, not as a prefix.
    assert!(names(all_pages(catalog, list(100, None, &[("env", "pro")])).await).is_empty());
}

/// One update adds, removes and relabels; the answer is what a later read finds, the
/// create time stays and the update time is the one given.
async fn an_update_adds_and_removes_nodes_and_changes_labels(catalog: &Catalog) {
    let nodes = vec![
        node("10.0.0.1", 7400, "dc1", "r1"),
        node("10.0.0.2", 7400, "dc1", "r1"),
    ];
    let original = cluster("prod", nodes.clone());
    catalog.insert_cluster(&original).await.expect("insert");

    // The removed node's address comes back as a new node: a replaced machine.
    let mut replacement = node("10.0.0.2", 7400, "dc1", "r2");
    replacement.add_time = at(T0 + 50);
    let added = node("10.0.0.3", 7400, "dc2", "r1");
    let mut update = no_change("prod");
    update.add_nodes = vec![replacement.spec.clone(), added.spec.clone()];
    update.remove_node_ids = vec![nodes[1].info.node_id];
    update.set_labels = labels(&[("env", "prod"), ("tier", "gold")]);
    update.remove_labels = vec![LabelKey::parse("remove_labels", "team/db").expect("key")];
    let updated = catalog
        .update_cluster(
            original.id,
            &update,
            &[replacement.clone(), added.clone()],
            at(T0 + 60),
        )
        .await
        .expect("update");

    let mut expected = original.clone();
    expected.labels = labels(&[("env", "prod"), ("tier", "gold")]);
    expected.nodes = vec![nodes[0].clone(), replacement, added];
    expected.update_time = at(T0 + 60);
    assert_eq!(updated, expected);
    assert_eq!(
        catalog.find_cluster("prod").await.expect("find"),
        Some(expected)
    );
    // The removed node (its id; its address went to the replacement) is free for another
    // cluster.
    let mut moved = node("10.0.0.7", 7400, "dc1", "r1");
    moved.info.node_id = nodes[1].info.node_id;
    catalog
        .insert_cluster(&cluster("other", vec![moved]))
        .await
        .expect("a removed node can join another cluster");
}

/// Refused updates name what is wrong and change nothing, even the parts of the update
/// that were valid.
async fn refused_updates_change_nothing(catalog: &Catalog) {
    let nodes = vec![
        node("10.0.0.1", 7400, "dc1", "r1"),
        node("10.0.0.2", 7400, "dc1", "r1"),
    ];
    let original = cluster("prod", nodes.clone());
    catalog.insert_cluster(&original).await.expect("insert");
    let other = insert_cluster(catalog, "other", 9000).await;

    let unknown = no_change("ghost");
    match catalog
        .update_cluster(Uuid::now_v7(), &unknown, &[], at(T0 + 60))
        .await
    {
        Err(Error::NotFound {
            kind: "cluster",
            name,
        }) => assert_eq!(name, "ghost"),
        other => panic!("an unknown cluster is NOT_FOUND, got {other:?}"),
    }

    let mut unknown_node = no_change("prod");
    unknown_node.remove_node_ids = vec![nodes[0].info.node_id, other.nodes[0].info.node_id];
    match catalog
        .update_cluster(original.id, &unknown_node, &[], at(T0 + 60))
        .await
    {
        Err(Error::NotFound { kind: "node", name }) => {
            assert!(
                name.contains(&other.nodes[0].info.node_id.to_string()),
                "{name}"
            );
        }
        other => panic!("a node of another cluster is NOT_FOUND here, got {other:?}"),
    }

    let mut everything = no_change("prod");
    everything.remove_node_ids = nodes.iter().map(|n| n.info.node_id).collect();
    everything.set_labels = labels(&[("env", "gone")]);
    match catalog
        .update_cluster(original.id, &everything, &[], at(T0 + 60))
        .await
    {
        Err(Error::FailedPrecondition(message)) => {
            assert!(message.contains("no nodes left"), "{message}")
        }
        other => panic!("removing every node is FAILED_PRECONDITION, got {other:?}"),
    }

    // A new node claimed by another cluster: ALREADY_EXISTS, and the removal in the same
    // update is rolled back.
    let mut claimed = no_change("prod");
    claimed.remove_node_ids = vec![nodes[1].info.node_id];
    claimed.add_nodes = vec![other.nodes[0].spec.clone()];
    match catalog
        .update_cluster(
            original.id,
            &claimed,
            &[other.nodes[0].clone()],
            at(T0 + 60),
        )
        .await
    {
        Err(Error::AlreadyExists(message)) => {
            assert!(message.contains("\"other\""), "{message}")
        }
        other => panic!("a claimed node is ALREADY_EXISTS, got {other:?}"),
    }

    assert_eq!(
        catalog.find_cluster("prod").await.expect("find"),
        Some(original)
    );
    assert_eq!(
        catalog.find_cluster("other").await.expect("find"),
        Some(other)
    );
}

/// Replacing every node in one update is fine: one node remains, the new one.
async fn every_node_can_be_replaced_in_one_update(catalog: &Catalog) {
    let original = insert_cluster(catalog, "prod", 7400).await;
    let fresh = node("10.0.0.8", 7400, "dc1", "r1");
    let mut update = no_change("prod");
    update.remove_node_ids = vec![original.nodes[0].info.node_id];
    update.add_nodes = vec![fresh.spec.clone()];
    let updated = catalog
        .update_cluster(
            original.id,
            &update,
            std::slice::from_ref(&fresh),
            at(T0 + 60),
        )
        .await
        .expect("replace the only node");
    assert_eq!(updated.nodes, vec![fresh]);
}

/// A node id given twice for removal is still one node: the cluster keeps its other node.
async fn removing_the_same_node_twice_removes_one_node(catalog: &Catalog) {
    let nodes = vec![
        node("10.0.0.1", 7400, "dc1", "r1"),
        node("10.0.0.2", 7400, "dc1", "r1"),
    ];
    let original = cluster("prod", nodes.clone());
    catalog.insert_cluster(&original).await.expect("insert");
    let mut update = no_change("prod");
    update.remove_node_ids = vec![nodes[0].info.node_id, nodes[0].info.node_id];
    let updated = catalog
        .update_cluster(original.id, &update, &[], at(T0 + 60))
        .await
        .expect("one of two nodes removed");
    assert_eq!(updated.nodes, vec![nodes[1].clone()]);
}

/// A queued, running or canceling run holds its cluster: no delete, no node change (labels
/// may change); once it ended, both go through. Runs of other clusters do not count.
async fn an_active_run_holds_its_cluster(catalog: &Catalog) {
    let held = insert_cluster(catalog, "held", 7400).await;
    let bystander = insert_cluster(catalog, "bystander", 7401).await;
    let location = insert_location(catalog, "local").await;
    assert_eq!(catalog.active_run(held.id).await.expect("active run"), None);

    let mut run = backup_run(&held, &location, T0 + 100);
    catalog.insert_run(&run).await.expect("insert run");
    for state in [RunState::Queued, RunState::Running, RunState::Canceling] {
        set_state(catalog, &mut run, state).await;
        assert_eq!(
            catalog.active_run(held.id).await.expect("active run"),
            Some(ActiveRun {
                id: run.id,
                kind: "backup".into(),
                state: state.as_str().into()
            })
        );
        assert_eq!(
            catalog.active_run(bystander.id).await.expect("active run"),
            None
        );

        match catalog.delete_cluster(held.id, "held").await {
            Err(Error::FailedPrecondition(message)) => {
                assert!(
                    message.contains(&run.id.to_string()),
                    "names the run: {message}"
                );
                assert!(message.contains(state.as_str()), "{message}");
            }
            other => panic!("delete during a {state:?} run, got {other:?}"),
        }
        let mut remove = no_change("held");
        remove.remove_node_ids = vec![held.nodes[0].info.node_id];
        let extra = node("10.0.0.9", 7400, "dc1", "r1");
        remove.add_nodes = vec![extra.spec.clone()];
        match catalog
            .update_cluster(held.id, &remove, &[extra], at(T0 + 200))
            .await
        {
            Err(Error::FailedPrecondition(message)) => {
                assert!(
                    message.contains(&run.id.to_string()),
                    "names the run: {message}"
                );
            }
            other => panic!("node change during a {state:?} run, got {other:?}"),
        }
        let mut relabel = no_change("held");
        relabel.set_labels = labels(&[("state", state.as_str())]);
        let relabelled = catalog
            .update_cluster(held.id, &relabel, &[], at(T0 + 200))
            .await
            .expect("labels change during a run");
        assert_eq!(relabelled.labels.as_map()["state"], state.as_str());
        assert_eq!(relabelled.nodes, held.nodes);
    }
    catalog
        .delete_cluster(bystander.id, "bystander")
        .await
        .expect("another cluster's run does not hold this one");

    set_state(catalog, &mut run, RunState::Canceled).await;
    assert_eq!(catalog.active_run(held.id).await.expect("active run"), None);
    catalog
        .delete_cluster(held.id, "held")
        .await
        .expect("delete once the run ended");
    assert_eq!(catalog.find_cluster("held").await.expect("find"), None);
    assert_eq!(catalog.active_run(held.id).await.expect("active run"), None);
}

/// Deleting removes the cluster, its nodes (free again), its run records and its backup
/// records; other clusters keep theirs. An unknown cluster is NOT_FOUND.
async fn deleting_a_cluster_removes_its_nodes_runs_and_backup_records(catalog: &Catalog) {
    let doomed = insert_cluster(catalog, "doomed", 7400).await;
    let kept = insert_cluster(catalog, "kept", 7401).await;
    let location = insert_location(catalog, "local").await;
    let mut run = backup_run(&doomed, &location, T0 + 100);
    catalog.insert_run(&run).await.expect("insert run");
    set_state(catalog, &mut run, RunState::Succeeded).await;
    let mut kept_run = backup_run(&kept, &location, T0 + 100);
    catalog.insert_run(&kept_run).await.expect("insert run");
    set_state(catalog, &mut kept_run, RunState::Failed).await;
    let doomed_backup = record_backup(catalog, &doomed, &location, T0 + 100).await;
    let kept_backup = record_backup(catalog, &kept, &location, T0 + 100).await;

    catalog
        .delete_cluster(doomed.id, "doomed")
        .await
        .expect("delete");
    assert_eq!(
        catalog
            .find_cluster(&doomed.id.to_string())
            .await
            .expect("find"),
        None
    );
    assert_eq!(catalog.get_run(run.id).await.expect("get run"), None);
    assert_eq!(
        catalog
            .get_backup(doomed_backup.id)
            .await
            .expect("get backup"),
        None
    );
    assert_eq!(
        catalog.get_run(kept_run.id).await.expect("get run"),
        Some(kept_run)
    );
    assert_eq!(
        catalog
            .get_backup(kept_backup.id)
            .await
            .expect("get backup"),
        Some(kept_backup)
    );
    assert_eq!(
        catalog.find_cluster("kept").await.expect("find"),
        Some(kept)
    );
    // The same name and node can be registered again.
    catalog
        .insert_cluster(&cluster("doomed", doomed.nodes.clone()))
        .await
        .expect("name and node are free again");

    match catalog.delete_cluster(Uuid::now_v7(), "ghost").await {
        Err(Error::NotFound {
            kind: "cluster",
            name,
        }) => assert_eq!(name, "ghost"),
        other => panic!("deleting an unknown cluster is NOT_FOUND, got {other:?}"),
    }
}

/// A check's answers replace what the nodes that answered reported before (hostname, data
/// paths, version, info time) and touch the cluster; other nodes keep theirs, and a node id
/// of another cluster changes nothing.
async fn node_info_is_recorded_for_the_nodes_that_answered(catalog: &Catalog) {
    let nodes = vec![
        node("10.0.0.1", 7400, "dc1", "r1"),
        node("10.0.0.2", 7400, "dc1", "r1"),
    ];
    let original = cluster("prod", nodes.clone());
    catalog.insert_cluster(&original).await.expect("insert");
    let other = insert_cluster(catalog, "other", 9000).await;

    let fresh = NodeInfo {
        node_id: nodes[1].info.node_id,
        hostname: "renamed.example".into(),
        data_paths: vec![DataPath {
            path: "/data/new".into(),
            free_bytes: 7,
            total_bytes: 9,
        }],
        agent_version: "0.2.0".into(),
    };
    let foreign = NodeInfo {
        node_id: other.nodes[0].info.node_id,
        ..fresh.clone()
    };
    catalog
        .record_node_info(original.id, &[fresh.clone(), foreign], at(T0 + 90))
        .await
        .expect("record node info");

    let mut expected = original.clone();
    expected.nodes[1].info = fresh;
    expected.nodes[1].info_time = at(T0 + 90);
    expected.update_time = at(T0 + 90);
    assert_eq!(
        catalog.find_cluster("prod").await.expect("find"),
        Some(expected.clone())
    );
    assert_eq!(
        catalog.find_cluster("other").await.expect("find"),
        Some(other)
    );

    // Nothing answered: nothing changes, not even the update time.
    catalog
        .record_node_info(original.id, &[], at(T0 + 95))
        .await
        .expect("record nothing");
    assert_eq!(
        catalog.find_cluster("prod").await.expect("find"),
        Some(expected)
    );
}

catalog_tests!(
    a_cluster_round_trips_every_field_found_by_id_or_name,
    empty_labels_and_topology_round_trip,
    names_node_ids_and_addresses_are_unique_across_clusters,
    clusters_are_listed_by_name_a_page_at_a_time,
    the_cluster_listing_keeps_clusters_with_all_labels_asked_for,
    an_update_adds_and_removes_nodes_and_changes_labels,
    refused_updates_change_nothing,
    every_node_can_be_replaced_in_one_update,
    removing_the_same_node_twice_removes_one_node,
    an_active_run_holds_its_cluster,
    deleting_a_cluster_removes_its_nodes_runs_and_backup_records,
    node_info_is_recorded_for_the_nodes_that_answered,
);
