//! End-to-end tests: the real `coffer-server`, `coffer-agent`, `cofferctl` and grpcurl on
//! loopback ports, with real SQLite catalog files in temporary directories.

mod agent_confinement;
mod agent_loss;
mod agent_tls;
mod auth;
mod backups;
mod bad_input;
mod clusters;
mod cofferctl;
mod deep_validate;
mod dev_mode;
mod encryption;
mod import;
mod locations;
mod locations_cloud;
mod metrics;
mod packs;
mod prometheus;
mod purge;
mod reflection;
mod restores;
mod schedules;
mod sdk_python;
mod service_units;
mod status_page;
mod storage_s3;
mod tls;
mod validate;
mod webhooks;

use coffer_client::proto;
use coffer_tests::TestAgent;

/// A node spec for an agent.
pub fn node(agent: &TestAgent) -> proto::NodeSpec {
    proto::NodeSpec {
        address: agent.process.url.clone(),
        datacenter: "dc1".into(),
        rack: "r1".into(),
    }
}

/// A registration request.
pub fn register(name: &str, nodes: Vec<proto::NodeSpec>) -> proto::RegisterClusterRequest {
    proto::RegisterClusterRequest {
        name: name.into(),
        nodes,
        labels: Default::default(),
    }
}

/// The request that creates the S3 location `name` in SeaweedFS `weed` below `prefix`, its keys
/// named as the agents' environment variables `key_env` and `secret_env`, in the clear.
pub fn weed_location_request(
    name: &str,
    weed: &coffer_tests::SeaweedFs,
    prefix: &str,
    (key_env, secret_env): (&str, &str),
) -> proto::CreateLocationRequest {
    let env = |name: &str| proto::SecretRef {
        source: Some(proto::secret_ref::Source::Env(name.into())),
    };
    proto::CreateLocationRequest {
        name: name.into(),
        compression: None,
        encryption_key: Default::default(),
        options: Some(proto::create_location_request::Options::S3(
            proto::S3LocationOptions {
                bucket: weed.bucket.clone(),
                endpoint: weed.endpoint.clone(),
                prefix: prefix.into(),
                force_path_style: true,
                access_key_id: Some(env(key_env)),
                secret_access_key: Some(env(secret_env)),
                ..Default::default()
            },
        )),
    }
}

/// Creates the location of [`weed_location_request`].
pub async fn create_weed_location(
    client: &coffer_client::CofferClient,
    name: &str,
    weed: &coffer_tests::SeaweedFs,
    prefix: &str,
    envs: (&str, &str),
) -> proto::Location {
    client
        .locations()
        .create_location(weed_location_request(name, weed, prefix, envs))
        .await
        .expect("create location")
        .into_inner()
        .location
        .expect("location")
}

/// An agent `name` holding SeaweedFS `weed`'s keys in the environment variables `TEST_S3_KEY`
/// and `TEST_S3_SECRET`, with credentials for its endpoint and bucket, and `extra` appended to
/// its configuration.
pub async fn weed_agent(
    root: &std::path::Path,
    name: &str,
    weed: &coffer_tests::SeaweedFs,
    extra: &str,
) -> TestAgent {
    let config = coffer_tests::credentials(
        &["env:TEST_S3_KEY", "env:TEST_S3_SECRET"],
        &weed.endpoint,
        &[&weed.bucket],
    ) + extra;
    TestAgent::start_with_credentials(
        root,
        name,
        &[
            ("TEST_S3_KEY", weed.access_key.as_str()),
            ("TEST_S3_SECRET", weed.secret_key.as_str()),
        ],
        &config,
    )
    .await
}

/// A key file of 64 hex digits, mode 600.
pub fn key_file(dir: &std::path::Path, name: &str, seed: u64) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let hex: String = coffer_tests::noise(32, seed)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    std::fs::write(&path, format!("{hex}\n")).expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Registers the cluster `prod` of `agent` and creates the fs location `local` at
/// `root/backups`: the set-up most single-node tests start from.
pub async fn prod_with_local(
    client: &coffer_client::CofferClient,
    agent: &TestAgent,
    root: &std::path::Path,
) {
    client
        .clusters()
        .register_cluster(register("prod", vec![node(agent)]))
        .await
        .expect("register");
    coffer_tests::create_fs_location(client, "local", &root.join("backups")).await;
}
