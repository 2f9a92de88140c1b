//! Cluster registration, listing, update, deletion and checks against real agents.

use coffer_client::proto;
use coffer_tests::{
    TestAgent, TestServer, closed_address, create_fs_location, get_run, noise, watch_to_end, write,
};
use tonic::Code;

use crate::{node, register};

async fn three_agents(root: &std::path::Path) -> Vec<TestAgent> {
    let (a, b, c) = tokio::join!(
        TestAgent::start(root, "a"),
        TestAgent::start(root, "b"),
        TestAgent::start(root, "c"),
    );
    vec![a, b, c]
}

#[tokio::test]
async fn a_three_agent_cluster_is_registered_with_what_its_agents_report() {
    let root = tempfile::tempdir().expect("tempdir");
    let agents = three_agents(root.path()).await;
    let server = TestServer::start(root.path()).await;
    let mut clusters = server.client().await.clusters();

    let mut request = register("prod", agents.iter().map(node).collect());
    request.labels.insert("env".into(), "production".into());
    let registered = clusters
        .register_cluster(request)
        .await
        .expect("register")
        .into_inner()
        .cluster
        .expect("cluster");
    assert_eq!(registered.name, "prod");
    assert_eq!(
        registered.labels.get("env").map(String::as_str),
        Some("production")
    );
    assert_eq!(registered.nodes.len(), 3);
    for agent in &agents {
        let recorded = registered
            .nodes
            .iter()
            .find(|n| n.address == agent.process.url)
            .expect("every agent is a node");
        assert_eq!(recorded.id, agent.node_id(), "node id is the agent's own");
        assert_eq!(recorded.data_paths.len(), 1);
        assert_eq!(
            std::path::Path::new(&recorded.data_paths[0].path),
            agent.data.as_path()
        );
        assert!(recorded.data_paths[0].total_bytes > 0);
        assert!(recorded.data_paths[0].free_bytes > 0);
        assert!(!recorded.hostname.is_empty());
        assert_eq!(recorded.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(recorded.datacenter, "dc1");
    }

    let listed = clusters
        .list_clusters(proto::ListClustersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.clusters, vec![registered.clone()]);
    assert!(listed.next_page_token.is_empty());

    let by_id = clusters
        .get_cluster(proto::GetClusterRequest {
            cluster: registered.id.clone(),
        })
        .await
        .expect("get by id")
        .into_inner()
        .cluster;
    assert_eq!(by_id.as_ref(), Some(&registered));
}

#[tokio::test]
async fn clusters_survive_a_server_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let agents = three_agents(root.path()).await;
    let server = TestServer::start(root.path()).await;
    let registered = server
        .client()
        .await
        .clusters()
        .register_cluster(register("kept", agents.iter().map(node).collect()))
        .await
        .expect("register")
        .into_inner()
        .cluster
        .expect("cluster");
    server.process.stop().await;

    let restarted = TestServer::start(root.path()).await;
    let found = restarted
        .client()
        .await
        .clusters()
        .get_cluster(proto::GetClusterRequest {
            cluster: "kept".into(),
        })
        .await
        .expect("get after restart")
        .into_inner()
        .cluster;
    assert_eq!(found, Some(registered));
}

#[tokio::test]
async fn unreachable_agents_are_refused_by_name_and_nothing_is_recorded() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let server = TestServer::start(root.path()).await;
    let mut clusters = server.client().await.clusters();
    let dead_one = closed_address();
    let dead_two = closed_address();
    let request = register(
        "partial",
        vec![
            node(&agent),
            proto::NodeSpec {
                address: dead_one.clone(),
                ..Default::default()
            },
            proto::NodeSpec {
                address: format!("http://{dead_two}"),
                ..Default::default()
            },
        ],
    );
    let status = clusters
        .register_cluster(request)
        .await
        .expect_err("unreachable agents");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains(&dead_one), "{}", status.message());
    assert!(status.message().contains(&dead_two), "{}", status.message());
    assert!(
        !status.message().contains(agent.process.host_port()),
        "only unreachable agents are named: {}",
        status.message()
    );
    let listed = clusters
        .list_clusters(proto::ListClustersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.clusters.is_empty());
}

#[tokio::test]
async fn updates_add_and_remove_nodes_and_labels_atomically() {
    let root = tempfile::tempdir().expect("tempdir");
    let agents = three_agents(root.path()).await;
    let server = TestServer::start(root.path()).await;
    let mut clusters = server.client().await.clusters();
    let mut request = register("grow", vec![node(&agents[0])]);
    request.labels.insert("team".into(), "db".into());
    request.labels.insert("tier".into(), "gold".into());
    clusters.register_cluster(request).await.expect("register");

    let mut update = proto::UpdateClusterRequest {
        cluster: "grow".into(),
        add_nodes: vec![node(&agents[1]), node(&agents[2])],
        remove_node_ids: vec![agents[0].node_id()],
        remove_labels: vec!["tier".into()],
        ..Default::default()
    };
    update.set_labels.insert("team".into(), "storage".into());
    let updated = clusters
        .update_cluster(update)
        .await
        .expect("update")
        .into_inner()
        .cluster
        .expect("cluster");
    let mut ids: Vec<_> = updated.nodes.iter().map(|n| n.id.clone()).collect();
    ids.sort();
    let mut expected = vec![agents[1].node_id(), agents[2].node_id()];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(updated.labels.len(), 1);
    assert_eq!(updated.labels["team"], "storage");

    // A change that fails in part changes nothing: the new node is unreachable.
    let failed = clusters
        .update_cluster(proto::UpdateClusterRequest {
            cluster: "grow".into(),
            add_nodes: vec![proto::NodeSpec {
                address: closed_address(),
                ..Default::default()
            }],
            remove_node_ids: vec![agents[1].node_id()],
            ..Default::default()
        })
        .await
        .expect_err("unreachable new node");
    assert_eq!(failed.code(), Code::FailedPrecondition);
    let unchanged = clusters
        .get_cluster(proto::GetClusterRequest {
            cluster: "grow".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .cluster
        .expect("cluster");
    assert_eq!(unchanged.nodes, updated.nodes);

    // The last nodes cannot all go.
    let status = clusters
        .update_cluster(proto::UpdateClusterRequest {
            cluster: "grow".into(),
            remove_node_ids: vec![agents[1].node_id(), agents[2].node_id()],
            ..Default::default()
        })
        .await
        .expect_err("no nodes left");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("no nodes left"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn an_agent_belongs_to_one_cluster_only() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let server = TestServer::start(root.path()).await;
    let mut clusters = server.client().await.clusters();
    clusters
        .register_cluster(register("first", vec![node(&agent)]))
        .await
        .expect("register");
    let status = clusters
        .register_cluster(register("second", vec![node(&agent)]))
        .await
        .expect_err("agent taken");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status.message().contains("\"first\""),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn delete_is_refused_while_a_run_is_active() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    // 16 MiB of incompressible data at 512 KiB/s: a backup that runs for about half a minute
    // unless canceled, far longer than the refused calls below take.
    for file in 0..16u64 {
        write(
            &agent.data.join(format!("f{file}.bin")),
            &noise(1 << 20, file),
        );
    }
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    let mut clusters = client.clusters();
    let cluster = clusters
        .register_cluster(register("busy", vec![node(&agent)]))
        .await
        .expect("register")
        .into_inner()
        .cluster
        .expect("cluster");
    create_fs_location(&client, "local", &root.path().join("backups")).await;
    let run_id = client
        .backups()
        .start_backup(proto::StartBackupRequest {
            cluster: "busy".into(),
            backup: Some(proto::BackupSpec {
                kind: proto::BackupKind::Full.into(),
                location: "local".into(),
                limits: Some(proto::TransferLimits {
                    rate_limit_bytes_per_second: 512 << 10,
                    concurrency: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("start backup")
        .into_inner()
        .run_id;

    // Wait until the run is running and bytes move.
    let mut stream = client
        .runs()
        .watch_run(proto::WatchRunRequest {
            run_id: run_id.clone(),
            min_update_interval: None,
        })
        .await
        .expect("watch")
        .into_inner();
    loop {
        let run = stream
            .message()
            .await
            .expect("watch stream")
            .expect("the run is still going")
            .run
            .expect("run");
        assert!(!is_final(run.state()), "{run:?}");
        if run.state() == proto::RunState::Running
            && run.totals.as_ref().is_some_and(|t| t.bytes_done > 0)
        {
            break;
        }
    }
    drop(stream);

    let status = clusters
        .delete_cluster(proto::DeleteClusterRequest {
            cluster: "busy".into(),
        })
        .await
        .expect_err("run active");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&run_id), "{}", status.message());
    let status = clusters
        .update_cluster(proto::UpdateClusterRequest {
            cluster: "busy".into(),
            remove_node_ids: vec![agent.node_id()],
            ..Default::default()
        })
        .await
        .expect_err("nodes locked by the run");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&run_id), "{}", status.message());
    // The refusals left the run alone.
    let run = get_run(&client, &run_id).await;
    assert_eq!(run.state(), proto::RunState::Running, "{run:?}");

    // End the run through the API and wait until it is final.
    client
        .runs()
        .cancel_run(proto::CancelRunRequest {
            run_id: run_id.clone(),
        })
        .await
        .expect("cancel");
    let last = watch_to_end(&client, &run_id).await.pop().expect("final");
    assert_eq!(
        last.state(),
        proto::RunState::Canceled,
        "{}",
        last.error_message
    );

    clusters
        .delete_cluster(proto::DeleteClusterRequest {
            cluster: cluster.id.clone(),
        })
        .await
        .expect("delete once the run ended");
    let status = clusters
        .get_cluster(proto::GetClusterRequest {
            cluster: "busy".into(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound);
    // The agent is free for another cluster again.
    clusters
        .register_cluster(register("again", vec![node(&agent)]))
        .await
        .expect("register the freed agent");
}

fn is_final(state: proto::RunState) -> bool {
    matches!(
        state,
        proto::RunState::Succeeded | proto::RunState::Failed | proto::RunState::Canceled
    )
}

#[tokio::test]
async fn check_reports_each_agent_live_and_ids_survive_agent_restarts() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut agents = three_agents(root.path()).await;
    let server = TestServer::start(root.path()).await;
    let mut clusters = server.client().await.clusters();
    clusters
        .register_cluster(register("watched", agents.iter().map(node).collect()))
        .await
        .expect("register");

    let health_of = |response: &proto::CheckClusterResponse, agent: &TestAgent| {
        response
            .nodes
            .iter()
            .find(|status| status.address == agent.process.url)
            .map(|status| (status.health(), status.message.clone()))
            .expect("status of every node")
    };
    let check = proto::CheckClusterRequest {
        cluster: "watched".into(),
    };
    let all_up = clusters
        .check_cluster(check.clone())
        .await
        .expect("check")
        .into_inner();
    for agent in &agents {
        assert_eq!(health_of(&all_up, agent).0, proto::NodeHealth::Serving);
    }

    // Restart agent b on the same port with the same state: same node, still serving.
    let b = agents.remove(1);
    let b_address = b.process.host_port().to_string();
    b.process.stop().await;
    let b = TestAgent::start_on(root.path(), "b", &b_address).await;
    let c = agents.pop().expect("agent c");
    let c_address = c.process.host_port().to_string();
    c.process.kill().await;
    let after = clusters
        .check_cluster(check.clone())
        .await
        .expect("check")
        .into_inner();
    assert_eq!(health_of(&after, &b).0, proto::NodeHealth::Serving);
    let c_status = after
        .nodes
        .iter()
        .find(|status| status.address.ends_with(&c_address))
        .expect("c reported");
    assert_eq!(c_status.health(), proto::NodeHealth::Unreachable);
    assert!(!c_status.message.is_empty());

    // A different agent (fresh state) on c's address is a mismatch, not c.
    let impostor = TestAgent::start_on(root.path(), "impostor", &c_address).await;
    let after = clusters
        .check_cluster(check)
        .await
        .expect("check")
        .into_inner();
    let (health, message) = health_of(&after, &impostor);
    assert_eq!(health, proto::NodeHealth::Mismatch);
    assert!(message.contains(&impostor.node_id()), "{message}");
}

#[tokio::test]
async fn listing_pages_through_clusters_in_name_order_and_filters_by_label() {
    let root = tempfile::tempdir().expect("tempdir");
    let names = ["echo", "alpha", "delta", "charlie", "bravo"];
    let mut agents = Vec::new();
    for name in names {
        agents.push(TestAgent::start(root.path(), name).await);
    }
    let server = TestServer::start(root.path()).await;
    let mut clusters = server.client().await.clusters();
    for (index, (name, agent)) in names.iter().zip(&agents).enumerate() {
        let mut request = register(name, vec![node(agent)]);
        let parity = if index % 2 == 0 { "even" } else { "odd" };
        request.labels.insert("parity".into(), parity.into());
        clusters.register_cluster(request).await.expect("register");
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = clusters
            .list_clusters(proto::ListClustersRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list page")
            .into_inner();
        pages += 1;
        assert!(page.clusters.len() <= 2);
        seen.extend(page.clusters.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["alpha", "bravo", "charlie", "delta", "echo"]);
    assert_eq!(pages, 3);

    let mut filter = proto::ListClustersRequest::default();
    filter.labels.insert("parity".into(), "even".into());
    let even: Vec<_> = clusters
        .list_clusters(filter)
        .await
        .expect("filtered list")
        .into_inner()
        .clusters
        .into_iter()
        .map(|c| c.name)
        .collect();
    // Registered in the order echo, alpha, delta, charlie, bravo: even positions are
    // echo, delta and bravo.
    assert_eq!(even, ["bravo", "delta", "echo"]);
}
