//! Bad input on every implemented RPC gets the right code and a message naming the field.

use coffer_client::proto;
use coffer_tests::{TestAgent, TestServer};
use tonic::Code;

use crate::{node, register};

/// Asserts a failed call's code and that its message contains `needle`.
fn expect_status<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    needle: &str,
    case: &str,
) {
    let status = result.expect_err(case);
    assert_eq!(status.code(), code, "{case}: {}", status.message());
    assert!(
        status.message().contains(needle),
        "{case}: {:?} does not mention {needle:?}",
        status.message()
    );
}

#[tokio::test]
async fn every_cluster_rpc_refuses_bad_input_with_the_right_code() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a, b) = tokio::join!(
        TestAgent::start(root.path(), "a"),
        TestAgent::start(root.path(), "b")
    );
    let server = TestServer::start(root.path()).await;
    let mut clusters = server.client().await.clusters();
    clusters
        .register_cluster(register("taken", vec![node(&a)]))
        .await
        .expect("register");

    let spec = |address: &str| proto::NodeSpec {
        address: address.into(),
        ..Default::default()
    };
    let register_cases: Vec<(&str, proto::RegisterClusterRequest, Code, &str)> = vec![
        (
            "empty name",
            register("", vec![node(&b)]),
            Code::InvalidArgument,
            "invalid name",
        ),
        (
            "oversized name",
            register(&"n".repeat(64), vec![node(&b)]),
            Code::InvalidArgument,
            "invalid name",
        ),
        (
            "upper-case name",
            register("Prod", vec![node(&b)]),
            Code::InvalidArgument,
            "invalid name",
        ),
        (
            "duplicate name",
            register("taken", vec![node(&b)]),
            Code::AlreadyExists,
            "taken",
        ),
        (
            "no nodes",
            register("fresh", vec![]),
            Code::InvalidArgument,
            "invalid nodes",
        ),
        (
            "malformed address",
            register("fresh", vec![node(&b), spec("not an address")]),
            Code::InvalidArgument,
            "nodes[1].address",
        ),
        (
            "address without port",
            register("fresh", vec![spec("db-1.example")]),
            Code::InvalidArgument,
            "nodes[0].address",
        ),
        (
            "oversized address",
            register("fresh", vec![spec(&format!("{}:7400", "h".repeat(400)))]),
            Code::InvalidArgument,
            "nodes[0].address",
        ),
        (
            "duplicate address",
            register("fresh", vec![node(&b), node(&b)]),
            Code::InvalidArgument,
            "nodes[1].address",
        ),
        (
            "bad datacenter",
            register(
                "fresh",
                vec![proto::NodeSpec {
                    datacenter: "dc 1".into(),
                    ..node(&b)
                }],
            ),
            Code::InvalidArgument,
            "nodes[0].datacenter",
        ),
        (
            "oversized label value",
            proto::RegisterClusterRequest {
                labels: [("env".to_string(), "v".repeat(300))].into(),
                ..register("fresh", vec![node(&b)])
            },
            Code::InvalidArgument,
            "labels[env]",
        ),
        (
            "bad label key",
            proto::RegisterClusterRequest {
                labels: [("Env Name".to_string(), "x".to_string())].into(),
                ..register("fresh", vec![node(&b)])
            },
            Code::InvalidArgument,
            "invalid labels",
        ),
        (
            "agent in another cluster",
            register("fresh", vec![node(&a)]),
            Code::AlreadyExists,
            "taken",
        ),
    ];
    for (case, request, code, needle) in register_cases {
        expect_status(clusters.register_cluster(request).await, code, needle, case);
    }

    let get = |cluster: &str| proto::GetClusterRequest {
        cluster: cluster.into(),
    };
    expect_status(
        clusters.get_cluster(get("")).await,
        Code::InvalidArgument,
        "cluster",
        "get empty",
    );
    expect_status(
        clusters.get_cluster(get("nope")).await,
        Code::NotFound,
        "\"nope\"",
        "get unknown",
    );
    expect_status(
        clusters
            .get_cluster(get("0193a0b4-0000-7000-8000-00000000abcd"))
            .await,
        Code::NotFound,
        "0193a0b4-0000-7000-8000-00000000abcd",
        "get unknown id",
    );

    let list = |page_size: i32, page_token: &str| proto::ListClustersRequest {
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    };
    expect_status(
        clusters.list_clusters(list(-1, "")).await,
        Code::InvalidArgument,
        "page_size",
        "negative page",
    );
    expect_status(
        clusters.list_clusters(list(5000, "")).await,
        Code::InvalidArgument,
        "page_size",
        "huge page",
    );
    expect_status(
        clusters.list_clusters(list(10, "garbage")).await,
        Code::InvalidArgument,
        "page_token",
        "bad token",
    );

    let update = |f: fn(&mut proto::UpdateClusterRequest)| {
        let mut request = proto::UpdateClusterRequest {
            cluster: "taken".into(),
            ..Default::default()
        };
        f(&mut request);
        request
    };
    let update_cases: Vec<(&str, proto::UpdateClusterRequest, Code, &str)> = vec![
        (
            "nothing to change",
            update(|_| {}),
            Code::InvalidArgument,
            "nothing to change",
        ),
        (
            "unknown cluster",
            update(|r| {
                r.cluster = "nope".into();
                r.set_labels.insert("a".into(), "b".into());
            }),
            Code::NotFound,
            "\"nope\"",
        ),
        (
            "malformed node id",
            update(|r| r.remove_node_ids.push("node-1".into())),
            Code::InvalidArgument,
            "remove_node_ids[0]",
        ),
        (
            "unknown node id",
            update(|r| {
                r.remove_node_ids
                    .push("0193a0b4-0000-7000-8000-00000000abcd".into())
            }),
            Code::NotFound,
            "remove_node_ids[0]",
        ),
        (
            "malformed new address",
            update(|r| {
                r.add_nodes.push(proto::NodeSpec {
                    address: "http://".into(),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "add_nodes[0].address",
        ),
        (
            "label set and removed",
            update(|r| {
                r.set_labels.insert("env".into(), "x".into());
                r.remove_labels.push("env".into());
            }),
            Code::InvalidArgument,
            "remove_labels",
        ),
        (
            "bad label key to remove",
            update(|r| r.remove_labels.push(String::new())),
            Code::InvalidArgument,
            "remove_labels[0]",
        ),
    ];
    for (case, request, code, needle) in update_cases {
        expect_status(clusters.update_cluster(request).await, code, needle, case);
    }

    let delete = |cluster: &str| proto::DeleteClusterRequest {
        cluster: cluster.into(),
    };
    expect_status(
        clusters.delete_cluster(delete("")).await,
        Code::InvalidArgument,
        "cluster",
        "delete empty",
    );
    expect_status(
        clusters.delete_cluster(delete("nope")).await,
        Code::NotFound,
        "nope",
        "delete unknown",
    );
    let check = |cluster: &str| proto::CheckClusterRequest {
        cluster: cluster.into(),
    };
    expect_status(
        clusters.check_cluster(check("")).await,
        Code::InvalidArgument,
        "cluster",
        "check empty",
    );
    expect_status(
        clusters.check_cluster(check("nope")).await,
        Code::NotFound,
        "nope",
        "check unknown",
    );

    // Nothing of the refused requests was recorded.
    let listed = clusters
        .list_clusters(proto::ListClustersRequest::default())
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = listed.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["taken"]);
    assert_eq!(listed.clusters[0].nodes.len(), 1);
    assert!(listed.clusters[0].labels.is_empty());
}
