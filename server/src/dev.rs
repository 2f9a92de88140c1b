//! Dev mode: the whole of Coffer on one machine, on embedded defaults.
//!
//! Everything lives under one directory (default `.coffer-dev`): the catalog, a data folder that
//! stands for a database node's data, the agent's state, and a folder that serves as the
//! filesystem backup location. An agent runs in this process next to the server, and a cluster
//! named `dev` with that one node is registered (kept across restarts, since the agent's node id
//! is kept in its state folder).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use coffer_agent::config::{AgentConfig, SnapshotConfig, StoragePolicy};
use coffer_process::Layered;
use coffer_server::config::ServerOptions;
use coffer_server::model::location::{Compression, LocationOptions, NewLocation};
use coffer_server::model::{AgentAddress, ClusterUpdate, Labels, Name, NewCluster, NodeSpec};
use tokio_util::sync::CancellationToken;

/// Options of `coffer-server dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Directory that holds everything dev mode makes.
    #[arg(long, default_value = ".coffer-dev")]
    dir: PathBuf,

    /// Address of the embedded agent.
    #[arg(long, default_value = "127.0.0.1:50052")]
    agent_listen: SocketAddr,
}

/// A few files for the first backup to find, written only into a data folder dev mode has just
/// created: afterwards the folder is the user's.
const SEED_FILES: [(&str, &str); 3] = [
    (
        "hello.txt",
        "Hello from Coffer dev mode. Change me, then run an incremental backup.\n",
    ),
    (
        "shop/orders-1/data.csv",
        "order,item,quantity\n1,coffee,2\n2,tea,1\n3,coffee,5\n",
    ),
    (
        "shop/orders-1/schema.txt",
        "orders: order integer, item text, quantity integer\n",
    ),
];

fn seed_data(data: &Path) -> anyhow::Result<()> {
    for (relative, content) in SEED_FILES {
        let path = data.join(relative);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("create {}", folder.display()))?;
        }
        std::fs::write(&path, content).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// Where dev mode serves the status page unless told otherwise.
const DEV_STATUS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50053);

/// Name of the cluster dev mode registers.
const DEV_CLUSTER: &str = "dev";

pub async fn run(args: DevArgs, options: ServerOptions, dump_config: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("create dev directory {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("resolve {}", args.dir.display()))?;
    let data = dir.join("data");
    let storage = dir.join("storage");
    let first_start = !data.exists();
    for folder in [&data, &storage] {
        std::fs::create_dir_all(folder).with_context(|| format!("create {}", folder.display()))?;
    }
    if first_start {
        seed_data(&data)?;
    }
    // Dev mode's defaults sit below everything the user configured.
    let server_config = options
        .or(ServerOptions {
            catalog: Some(dir.join("catalog.db")),
            status_listen: Some(DEV_STATUS_LISTEN),
            ..ServerOptions::default()
        })
        .resolve()
        .context("resolve server configuration")?;
    let agent_config = AgentConfig {
        listen: args.agent_listen,
        data_paths: vec![data.clone()],
        state_dir: dir.join("agent-state"),
        // Dev mode runs on an operator's own machine: no commands from the API.
        restore_hooks: Default::default(),
        restore_keep_free: 0,
        // The dev location's folder, and nothing else, is storage it may open.
        storage: StoragePolicy {
            roots: vec![storage.clone()],
            credentials: Vec::new(),
            forbidden: vec![data.clone(), dir.join("agent-state")],
            keys: Vec::new(),
        },
        tls: None,
        metrics_listen: None,
        snapshot: SnapshotConfig::Dir {
            pre_hook: None,
            post_hook: None,
        },
    };
    if dump_config {
        println!("# server\n{}", toml::to_string(&server_config)?);
        println!("# agent\n{}", toml::to_string(&agent_config)?);
        return Ok(());
    }

    let agent = coffer_agent::Agent::open(agent_config.clone())
        .await
        .context("open dev agent")?;
    let agent_listener = bind(agent_config.listen, "--agent-listen").await?;
    let server_listener = bind(server_config.listen, "--listen").await?;
    let agent_address = agent_listener.local_addr().context("read agent address")?;
    let server_address = server_listener
        .local_addr()
        .context("read server address")?;

    let shutdown = CancellationToken::new();
    let agent_task = tokio::spawn(coffer_agent::run(
        agent_listener,
        agent,
        shutdown.clone().cancelled_owned(),
    ));
    let coffer = coffer_server::Coffer::open(&server_config)
        .await
        .context("open dev catalog")?;
    // cofferctl run in the directory that holds the dev folder finds the token there.
    coffer
        .tokens()
        .bootstrap(&server_config.admin_token_file)
        .await
        .context("create the dev admin token")?;
    let server_task = {
        let coffer = coffer.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            coffer_server::run(server_listener, &coffer, shutdown.cancelled_owned()).await
        })
    };

    let ready = async {
        ensure_dev_cluster(&coffer, agent_address).await?;
        ensure_dev_location(&coffer, &storage).await?;
        let metrics = match server_config.metrics_listen {
            Some(address) => Some(
                coffer_server::metrics::start_endpoint(&coffer, address, shutdown.clone()).await?,
            ),
            None => None,
        };
        let status = match server_config.status_listen {
            Some(address) => {
                Some(coffer_server::status::http::start(&coffer, address, shutdown.clone()).await?)
            }
            None => None,
        };
        anyhow::Ok((metrics, status))
    };
    let (metrics, status) = match ready.await {
        Ok(started) => started,
        Err(error) => {
            shutdown.cancel();
            return Err(error);
        }
    };
    print_welcome(
        server_address,
        if server_config.tls.is_some() {
            "https"
        } else {
            "http"
        },
        &dir,
        &server_config.admin_token_file,
        metrics.as_ref().map(|(bound, _)| *bound),
        status.as_ref().map(|(bound, _)| *bound),
    );

    tokio::select! {
        () = coffer_process::shutdown_signal() => {}
        () = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    let (agent_result, server_result) = tokio::join!(agent_task, server_task);
    for (what, task) in [("metrics endpoint", metrics), ("status page", status)]
        .into_iter()
        .filter_map(|(what, served)| Some((what, served?.1)))
    {
        if let Err(error) = task.await {
            tracing::warn!(%error, "{what} task");
        }
    }
    coffer.close().await;
    agent_result.context("join agent")?.context("agent")?;
    server_result.context("join server")?.context("server")?;
    Ok(())
}

/// Registers the `dev` cluster unless it exists (a restart of dev mode keeps it).
async fn ensure_dev_cluster(
    coffer: &coffer_server::Coffer,
    agent_address: SocketAddr,
) -> anyhow::Result<()> {
    let address = AgentAddress::parse("agent", &format!("http://{agent_address}"))
        .context("agent address")?;
    match coffer.clusters().get(DEV_CLUSTER).await {
        Ok(cluster)
            if cluster
                .nodes
                .iter()
                .any(|node| node.spec.address == address) =>
        {
            Ok(())
        }
        Ok(cluster) => {
            // Dev mode restarted on another agent port: the node is the same (its id lives in
            // the agent's state folder), only its address moved.
            tracing::info!(%address, "moving the dev node to its new agent address");
            let update = ClusterUpdate {
                cluster: cluster.id.to_string(),
                add_nodes: vec![dev_node(address)],
                remove_node_ids: cluster.nodes.iter().map(|node| node.info.node_id).collect(),
                set_labels: Labels::default(),
                remove_labels: Vec::new(),
            };
            coffer
                .clusters()
                .update(update)
                .await
                .context("move the dev node to its new address")?;
            Ok(())
        }
        Err(coffer_server::error::Error::NotFound { .. }) => {
            let cluster = NewCluster {
                name: Name::parse("name", DEV_CLUSTER).context("cluster name")?,
                nodes: vec![dev_node(address)],
                labels: Labels::parse("labels", [("env".to_string(), "dev".to_string())])
                    .context("labels")?,
            };
            coffer
                .clusters()
                .register(cluster)
                .await
                .context("register cluster `dev`")?;
            Ok(())
        }
        Err(error) => Err(error).context("look up cluster `dev`"),
    }
}

/// Name of the filesystem location dev mode creates.
const DEV_LOCATION: &str = "dev-fs";

/// Creates the `dev-fs` location over the dev storage folder unless it exists.
async fn ensure_dev_location(coffer: &coffer_server::Coffer, storage: &Path) -> anyhow::Result<()> {
    match coffer.locations().get(DEV_LOCATION).await {
        Ok(_) => Ok(()),
        Err(coffer_server::error::Error::NotFound { .. }) => {
            let location = NewLocation {
                name: Name::parse("name", DEV_LOCATION).context("location name")?,
                options: LocationOptions::Fs {
                    path: storage.display().to_string(),
                },
                compression: Compression::DEFAULT,
                encryption_key: None,
            };
            coffer
                .locations()
                .create(location)
                .await
                .context("create location `dev-fs`")?;
            Ok(())
        }
        Err(error) => Err(error).context("look up location `dev-fs`"),
    }
}

fn dev_node(address: AgentAddress) -> NodeSpec {
    NodeSpec {
        address,
        datacenter: "dc1".into(),
        rack: "rack1".into(),
    }
}

async fn bind(address: SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("bind {address} (in use? choose another address with {flag})"))
}

fn print_welcome(
    server: SocketAddr,
    scheme: &str,
    dir: &Path,
    token: &Path,
    metrics: Option<SocketAddr>,
    status: Option<SocketAddr>,
) {
    let status = match status {
        Some(address) => format!("{scheme}://{address}/ (sign in with the admin token)"),
        None => "off".into(),
    };
    let metrics = match metrics {
        Some(address) => format!("http://{address}/metrics"),
        None => "off (--metrics-listen 127.0.0.1:9464 serves them)".into(),
    };
    // First line as every Coffer process: scripts and tests read the bound address from it.
    coffer_process::announce(&format!("coffer-server listening on {scheme}://{server}"));
    coffer_process::announce(&format!(
        "
Coffer dev mode is running (Ctrl-C stops it).

  API            {server}   (gRPC, with reflection)
  catalog        {catalog}
  admin token    {token} (cofferctl run here finds it)
  status page    {status}
  metrics        {metrics}
  cluster        dev: one node, its agent embedded here, data in {data}
  location       dev-fs: {storage}

Talk to it:
  cargo run -q -p coffer-client -- --server {server} cluster list
  cargo run -q -p coffer-client -- --server {server} cluster check dev
  cargo run -q -p coffer-client -- --server {server} backup start dev --location dev-fs --watch
  grpcurl -plaintext {server} list
  grpcurl -plaintext -H \"authorization: Bearer $(cat {token})\" {server} coffer.v1.ClusterService/ListClusters
",
        catalog = dir.join("catalog.db").display(),
        token = token.display(),
        data = dir.join("data").display(),
        storage = dir.join("storage").display(),
    ));
}
