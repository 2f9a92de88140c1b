//! Reflection and health: what tools without the protos (grpcurl, buf curl, Postman) rely on.

use coffer_client::proto;
use coffer_tests::{TestAgent, TestServer, tool};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::{node, register};

const SERVICES: [&str; 7] = [
    "coffer.v1.BackupService",
    "coffer.v1.ClusterService",
    "coffer.v1.LocationService",
    "coffer.v1.RestoreService",
    "coffer.v1.RunService",
    "coffer.v1.ScheduleService",
    "coffer.v1.TokenService",
];

async fn grpcurl(args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(tool("grpcurl"))
        .args(args)
        .output()
        .await
        .expect("run grpcurl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn grpcurl_lists_every_service_and_calls_the_api_through_reflection_alone() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let server = TestServer::start(root.path()).await;
    let address = server.process.host_port().to_string();
    let authorization = format!(
        "authorization: Bearer {}",
        server.admin_token.as_deref().expect("a token")
    );

    // Reflection is open: listing needs no token.
    let (ok, listed, stderr) = grpcurl(&["-plaintext", &address, "list"]).await;
    assert!(ok, "grpcurl list: {stderr}");
    for service in SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(
            listed.lines().any(|line| line == *service),
            "{service} in:\n{listed}"
        );
    }

    // Register through grpcurl, JSON in, with no .proto file anywhere.
    let body = serde_json::json!({
        "name": "via-grpcurl",
        "nodes": [{"address": agent.process.url, "datacenter": "dc1"}],
        "labels": {"tool": "grpcurl"},
    })
    .to_string();
    let (ok, _, stderr) = grpcurl(&[
        "-plaintext",
        "-d",
        &body,
        &address,
        "coffer.v1.ClusterService/RegisterCluster",
    ])
    .await;
    assert!(!ok, "a call without a token is refused");
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    let (ok, registered, stderr) = grpcurl(&[
        "-plaintext",
        "-H",
        &authorization,
        "-d",
        &body,
        &address,
        "coffer.v1.ClusterService/RegisterCluster",
    ])
    .await;
    assert!(ok, "grpcurl RegisterCluster: {stderr}");
    let registered: serde_json::Value = serde_json::from_str(&registered).expect("json");
    assert_eq!(registered["cluster"]["nodes"][0]["id"], agent.node_id());

    let (ok, listed, stderr) = grpcurl(&[
        "-plaintext",
        "-H",
        &authorization,
        "-d",
        "{}",
        &address,
        "coffer.v1.ClusterService/ListClusters",
    ])
    .await;
    assert!(ok, "grpcurl ListClusters: {stderr}");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed["clusters"][0]["name"], "via-grpcurl");
    assert_eq!(listed["clusters"][0]["labels"]["tool"], "grpcurl");

    // Errors come back with their code.
    let (ok, _, stderr) = grpcurl(&[
        "-plaintext",
        "-H",
        &authorization,
        "-d",
        r#"{"cluster": "nope"}"#,
        &address,
        "coffer.v1.ClusterService/GetCluster",
    ])
    .await;
    assert!(!ok);
    assert!(stderr.contains("NotFound"), "{stderr}");

    // The health service says the cluster API is serving; it is open too.
    let (ok, health, stderr) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service": "coffer.v1.ClusterService"}"#,
        &address,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(ok, "grpcurl health: {stderr}");
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test]
async fn reflection_v1_serves_every_service_and_unimplemented_rpcs_say_so() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let server = TestServer::start(root.path()).await;

    let channel = tonic::transport::Endpoint::from_shared(server.process.url.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in SERVICES {
        assert!(names.iter().any(|n| n == service), "{service} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("coffer.agent")),
        "the server does not advertise the agent API: {names:?}"
    );

    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("later", vec![node(&agent)]))
        .await
        .expect("register");
    let status = client
        .schedules()
        .create_schedule(proto::CreateScheduleRequest::default())
        .await
        .expect_err("an empty request is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("name"), "{}", status.message());
}

#[tokio::test]
async fn the_agent_serves_its_own_api_with_reflection() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let (ok, listed, stderr) = grpcurl(&["-plaintext", agent.process.host_port(), "list"]).await;
    assert!(ok, "grpcurl list: {stderr}");
    assert!(listed.contains("coffer.agent.v1.AgentService"), "{listed}");
    assert!(!listed.contains("coffer.v1.ClusterService"), "{listed}");
    let (ok, info, stderr) = grpcurl(&[
        "-plaintext",
        agent.process.host_port(),
        "coffer.agent.v1.AgentService/GetNodeInfo",
    ])
    .await;
    assert!(ok, "GetNodeInfo: {stderr}");
    let info: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(info["node"]["nodeId"], agent.node_id());
    assert_eq!(info["node"]["snapshotProvider"], "dir");
}

/// Calls `method` with the JSON `body` through grpcurl and reflection; panics unless it succeeds.
async fn grpcurl_call(server: &TestServer, method: &str, body: &serde_json::Value) -> String {
    let body = body.to_string();
    let authorization = format!(
        "authorization: Bearer {}",
        server.admin_token.as_deref().expect("a token")
    );
    let (ok, stdout, stderr) = grpcurl(&[
        "-plaintext",
        "-max-time",
        "120",
        "-H",
        &authorization,
        "-d",
        &body,
        server.process.host_port(),
        method,
    ])
    .await;
    assert!(ok, "grpcurl {method} {body}: {stderr}");
    stdout
}

#[tokio::test]
async fn grpcurl_backs_up_a_cluster_and_watches_the_run_through_reflection_alone() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let server = TestServer::start(root.path()).await;
    std::fs::write(agent.data.join("one.txt"), b"first file\n").expect("write file");
    std::fs::write(agent.data.join("two.txt"), b"second file\n").expect("write file");
    let location = root.path().join("backups");

    let registered = grpcurl_call(
        &server,
        "coffer.v1.ClusterService/RegisterCluster",
        &serde_json::json!({"name": "curl", "nodes": [{"address": agent.process.url}]}),
    )
    .await;
    let registered: serde_json::Value = serde_json::from_str(&registered).expect("json");
    assert_eq!(registered["cluster"]["nodes"][0]["id"], agent.node_id());

    let created = grpcurl_call(
        &server,
        "coffer.v1.LocationService/CreateLocation",
        &serde_json::json!({"name": "curl-fs", "fs": {"path": location.display().to_string()}}),
    )
    .await;
    let created: serde_json::Value = serde_json::from_str(&created).expect("json");
    assert_eq!(created["location"]["name"], "curl-fs");

    let started = grpcurl_call(
        &server,
        "coffer.v1.BackupService/StartBackup",
        &serde_json::json!({
            "cluster": "curl",
            "backup": {"kind": "BACKUP_KIND_FULL", "location": "curl-fs"},
        }),
    )
    .await;
    let started: serde_json::Value = serde_json::from_str(&started).expect("json");
    let run_id = started["runId"].as_str().expect("runId").to_string();

    // grpcurl prints each message of the stream as one JSON object; the last one is final.
    let watched = grpcurl_call(
        &server,
        "coffer.v1.RunService/WatchRun",
        &serde_json::json!({"runId": run_id}),
    )
    .await;
    let messages: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&watched)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .expect("a JSON object per message");
    let last = &messages.last().expect("at least one message")["run"];
    assert_eq!(last["id"], run_id.as_str());
    assert_eq!(last["state"], "RUN_STATE_SUCCEEDED", "{watched}");
    assert!(last["finishTime"].is_string(), "{last}");
    let backup_id = last["backupId"].as_str().expect("backupId").to_string();

    let got = grpcurl_call(
        &server,
        "coffer.v1.BackupService/GetBackup",
        &serde_json::json!({"backupId": backup_id}),
    )
    .await;
    let got: serde_json::Value = serde_json::from_str(&got).expect("json");
    assert_eq!(got["backup"]["id"], backup_id.as_str());
    assert_eq!(got["backup"]["kind"], "BACKUP_KIND_FULL");
    assert_eq!(got["backup"]["clusterName"], "curl");
    // 64-bit integers are JSON strings in the proto3 JSON mapping.
    assert_eq!(got["backup"]["totals"]["fileCount"], "2", "{got}");
    assert_eq!(got["backup"]["totals"]["totalBytes"], "23", "{got}");
}
