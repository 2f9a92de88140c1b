//! `cofferctl cluster ...`: the commands of `coffer.v1.ClusterService`.

use clap::{ArgGroup, Args, Subcommand};

use coffer_client::proto;

use crate::cli::exit::EXIT_CODES_HELP;
use crate::cli::format::{self, NONE, or_none};
use crate::cli::output::{OutputFormat, with_list_field};
use crate::cli::paging::{Page, all_pages};
use crate::cli::parse::{Label, labels_to_map, parse_label, parse_label_key, parse_node_spec};
use crate::cli::table::Table;
use crate::cli::{CliError, Session};

/// The `cluster` commands.
#[derive(Debug, Subcommand)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub enum ClusterCommand {
    /// Register a new cluster. Every node's agent must answer.
    Register(RegisterArgs),
    /// List clusters, by name.
    ///
    /// Fetches every page unless --page-size or --page-token is given; then prints that one page
    /// and the next page token on stderr.
    List(ListArgs),
    /// Show a cluster and its nodes.
    Show(ClusterArgs),
    /// Add or remove nodes and set or remove labels, all in one change.
    Update(UpdateArgs),
    /// Remove a cluster from the catalog. Its backups in storage are not touched.
    Delete(ClusterArgs),
    /// Ask every node's agent for its live status.
    ///
    /// Exits with code 8 when any node is not serving, after printing every node's status.
    Check(ClusterArgs),
}

/// Arguments of `cluster register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Name of the new cluster: lowercase letters, digits, '-' and '_', starting with a letter.
    pub name: String,
    /// A node, as its agent's address with optional datacenter and rack. Repeat for each node.
    #[arg(
        long = "node",
        value_name = "ADDR[,dc=DC][,rack=RACK]",
        value_parser = parse_node_spec,
        required = true
    )]
    pub nodes: Vec<proto::NodeSpec>,
    /// A label. Repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<Label>,
}

/// Arguments of `cluster list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only clusters carrying this label. Repeat to require several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<Label>,
    /// Fetch one page of at most N clusters.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub page_size: Option<i32>,
    /// Fetch the page this token (printed by a previous --page-size call) starts.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}

/// A command that takes one cluster.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Name or id of the cluster.
    #[arg(value_name = "NAME_OR_ID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub cluster: String,
}

/// Arguments of `cluster update`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true)))]
pub struct UpdateArgs {
    /// Name or id of the cluster.
    #[arg(value_name = "NAME_OR_ID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub cluster: String,
    /// Add a node. Repeat for more.
    #[arg(
        long = "add-node",
        value_name = "ADDR[,dc=DC][,rack=RACK]",
        value_parser = parse_node_spec,
        group = "change"
    )]
    pub add_nodes: Vec<proto::NodeSpec>,
    /// Remove the node with this id. Repeat for more.
    #[arg(
        long = "remove-node",
        value_name = "NODE_ID",
        value_parser = clap::builder::NonEmptyStringValueParser::new(),
        group = "change"
    )]
    pub remove_nodes: Vec<String>,
    /// Set a label (adds it or overwrites its value). Repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, group = "change")]
    pub labels: Vec<Label>,
    /// Remove the label with this key. Repeat for more.
    #[arg(long = "remove-label", value_name = "KEY", value_parser = parse_label_key, group = "change")]
    pub remove_labels: Vec<String>,
}

/// Runs a `cluster` command.
pub async fn run(command: ClusterCommand, session: &Session) -> Result<(), CliError> {
    match command {
        ClusterCommand::Register(args) => register(args, session).await,
        ClusterCommand::List(args) => list(args, session).await,
        ClusterCommand::Show(args) => show(args, session).await,
        ClusterCommand::Update(args) => update(args, session).await,
        ClusterCommand::Delete(args) => delete(args, session).await,
        ClusterCommand::Check(args) => check(args, session).await,
    }
}

async fn register(args: RegisterArgs, session: &Session) -> Result<(), CliError> {
    let request = proto::RegisterClusterRequest {
        name: args.name,
        nodes: args.nodes,
        labels: labels_to_map(args.labels, "--label")?,
    };
    let client = session.connect().await?;
    let response = client
        .clusters()
        .register_cluster(request)
        .await?
        .into_inner();
    session.output.response(&response, |response| {
        Ok(render_cluster(required_cluster(response.cluster.as_ref())?))
    })
}

async fn list(args: ListArgs, session: &Session) -> Result<(), CliError> {
    let labels = labels_to_map(args.labels, "--label")?;
    let client = session.connect().await?;
    let clusters = client.clusters();
    let one_page = args.page_size.is_some() || args.page_token.is_some();
    let response = if one_page {
        clusters
            .clone()
            .list_clusters(proto::ListClustersRequest {
                page_size: args.page_size.unwrap_or(0),
                page_token: args.page_token.unwrap_or_default(),
                labels,
            })
            .await?
            .into_inner()
    } else {
        let all = all_pages(|page_token| {
            let mut clusters = clusters.clone();
            let request = proto::ListClustersRequest {
                page_size: 0,
                page_token,
                labels: labels.clone(),
            };
            async move {
                let page = clusters.list_clusters(request).await?.into_inner();
                Ok(Page {
                    items: page.clusters,
                    next_page_token: page.next_page_token,
                })
            }
        })
        .await?;
        proto::ListClustersResponse {
            clusters: all,
            next_page_token: String::new(),
        }
    };

    match session.output.format() {
        OutputFormat::Json => session.output.json(&with_list_field(
            coffer_client::to_json(&response)?,
            "clusters",
        ))?,
        OutputFormat::Table if response.clusters.is_empty() => {
            session.output.note("no clusters found");
        }
        OutputFormat::Table => session
            .output
            .data(&render_cluster_list(&response.clusters))?,
    }
    if !response.next_page_token.is_empty() {
        session.output.note(format_args!(
            "next page token: {}",
            response.next_page_token
        ));
    }
    Ok(())
}

async fn show(args: ClusterArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .clusters()
        .get_cluster(proto::GetClusterRequest {
            cluster: args.cluster,
        })
        .await?
        .into_inner();
    session.output.response(&response, |response| {
        Ok(render_cluster(required_cluster(response.cluster.as_ref())?))
    })
}

async fn update(args: UpdateArgs, session: &Session) -> Result<(), CliError> {
    let request = proto::UpdateClusterRequest {
        cluster: args.cluster,
        add_nodes: args.add_nodes,
        remove_node_ids: args.remove_nodes,
        set_labels: labels_to_map(args.labels, "--label")?,
        remove_labels: args.remove_labels,
    };
    let client = session.connect().await?;
    let response = client
        .clusters()
        .update_cluster(request)
        .await?
        .into_inner();
    session.output.response(&response, |response| {
        Ok(render_cluster(required_cluster(response.cluster.as_ref())?))
    })
}

async fn delete(args: ClusterArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .clusters()
        .delete_cluster(proto::DeleteClusterRequest {
            cluster: args.cluster.clone(),
        })
        .await?
        .into_inner();
    match session.output.format() {
        OutputFormat::Json => session.output.response(&response, |_| Ok(String::new()))?,
        OutputFormat::Table => session
            .output
            .note(format_args!("deleted cluster {}", args.cluster)),
    }
    Ok(())
}

async fn check(args: ClusterArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .clusters()
        .check_cluster(proto::CheckClusterRequest {
            cluster: args.cluster,
        })
        .await?
        .into_inner();
    session
        .output
        .response(&response, |response| Ok(render_check(&response.nodes)))?;
    let unhealthy = response
        .nodes
        .iter()
        .filter(|node| node.health() != proto::NodeHealth::Serving)
        .count();
    if unhealthy > 0 {
        return Err(CliError::Unhealthy {
            unhealthy,
            total: response.nodes.len(),
        });
    }
    Ok(())
}

/// The cluster a response must carry.
fn required_cluster(cluster: Option<&proto::Cluster>) -> Result<&proto::Cluster, CliError> {
    cluster.ok_or_else(|| CliError::Protocol("the response has no cluster".to_owned()))
}

/// `cluster list`: one row per cluster.
fn render_cluster_list(clusters: &[proto::Cluster]) -> String {
    let mut table = Table::new(["NAME", "ID", "NODES", "LABELS", "CREATED"]);
    for cluster in clusters {
        table.push([
            cluster.name.clone(),
            cluster.id.clone(),
            cluster.nodes.len().to_string(),
            format::labels(&cluster.labels),
            format::timestamp(cluster.create_time.as_ref()),
        ]);
    }
    table.render()
}

/// `cluster show` (and register, update): the cluster's fields, then its nodes.
fn render_cluster(cluster: &proto::Cluster) -> String {
    let mut out = format!(
        "Name:     {}\n\
         ID:       {}\n\
         Labels:   {}\n\
         Created:  {}\n\
         Updated:  {}\n\
         Nodes:    {}\n\n",
        cluster.name,
        cluster.id,
        format::labels(&cluster.labels),
        format::timestamp(cluster.create_time.as_ref()),
        format::timestamp(cluster.update_time.as_ref()),
        cluster.nodes.len(),
    );
    let mut table = Table::new([
        "NODE ID", "ADDRESS", "DC", "RACK", "HOSTNAME", "FREE", "AGENT",
    ]);
    for node in &cluster.nodes {
        table.push([
            node.id.clone(),
            node.address.clone(),
            or_none(&node.datacenter),
            or_none(&node.rack),
            or_none(&node.hostname),
            free_bytes(&node.data_paths),
            or_none(&node.agent_version),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// Free space summed over a node's data paths.
fn free_bytes(data_paths: &[proto::DataPath]) -> String {
    if data_paths.is_empty() {
        return NONE.to_owned();
    }
    let free = data_paths
        .iter()
        .fold(0_u64, |sum, path| sum.saturating_add(path.free_bytes));
    format::human_bytes(free)
}

/// `cluster check`: one row per node status.
fn render_check(nodes: &[proto::NodeStatus]) -> String {
    let mut table = Table::new([
        "NODE ID", "ADDRESS", "HEALTH", "LATENCY", "VERSION", "MESSAGE",
    ]);
    for node in nodes {
        table.push([
            node.node_id.clone(),
            node.address.clone(),
            health(node.health),
            format::duration(node.latency.as_ref()),
            or_none(&node.agent_version),
            node.message.clone(),
        ]);
    }
    table.render()
}

/// `SERVING`, `UNREACHABLE`, ...; an unknown value as `UNKNOWN(7)`.
fn health(value: i32) -> String {
    match proto::NodeHealth::try_from(value) {
        Ok(health) => health
            .as_str_name()
            .trim_start_matches("NODE_HEALTH_")
            .to_owned(),
        Err(_) => format!("UNKNOWN({value})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, free: &[u64]) -> proto::Node {
        proto::Node {
            id: id.to_owned(),
            address: format!("http://{id}:7070"),
            datacenter: "dc1".to_owned(),
            hostname: id.to_owned(),
            agent_version: "0.1.0".to_owned(),
            data_paths: free
                .iter()
                .map(|&free_bytes| proto::DataPath {
                    path: "/data".to_owned(),
                    free_bytes,
                    total_bytes: free_bytes * 2,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn show_renders_fields_and_a_node_table() {
        let cluster = proto::Cluster {
            id: "c-1".to_owned(),
            name: "prod".to_owned(),
            nodes: vec![node("a", &[1 << 30, 1 << 30]), node("b", &[])],
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let rendered = render_cluster(&cluster);
        assert!(rendered.starts_with("Name:     prod\nID:       c-1\nLabels:   -\n"));
        assert!(rendered.contains("Created:  2023-11-14T22:13:20Z\n"));
        assert!(rendered.contains("Updated:  -\n"));
        let table: Vec<&str> = rendered
            .lines()
            .skip_while(|line| !line.is_empty())
            .collect();
        assert_eq!(
            table,
            [
                "",
                "NODE ID   ADDRESS         DC    RACK   HOSTNAME   FREE      AGENT",
                "a         http://a:7070   dc1   -      a          2.0 GiB   0.1.0",
                "b         http://b:7070   dc1   -      b          -         0.1.0",
            ]
        );
    }

    #[test]
    fn check_shows_health_names_and_latency() {
        let rendered = render_check(&[
            proto::NodeStatus {
                node_id: "a".to_owned(),
                address: "http://a:7070".to_owned(),
                health: proto::NodeHealth::Serving as i32,
                latency: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1_500_000,
                }),
                agent_version: "0.1.0".to_owned(),
                ..Default::default()
            },
            proto::NodeStatus {
                node_id: "b".to_owned(),
                address: "http://b:7070".to_owned(),
                health: proto::NodeHealth::Unreachable as i32,
                message: "connection refused".to_owned(),
                ..Default::default()
            },
        ]);
        assert_eq!(
            rendered,
            "NODE ID   ADDRESS         HEALTH        LATENCY   VERSION   MESSAGE\n\
             a         http://a:7070   SERVING       1.5ms     0.1.0\n\
             b         http://b:7070   UNREACHABLE   -         -         connection refused\n"
        );
        assert_eq!(health(42), "UNKNOWN(42)");
    }

    #[test]
    fn list_renders_one_row_per_cluster() {
        let rendered = render_cluster_list(&[proto::Cluster {
            id: "c-1".to_owned(),
            name: "prod".to_owned(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            nodes: vec![node("a", &[])],
            ..Default::default()
        }]);
        assert_eq!(
            rendered,
            "NAME   ID    NODES   LABELS     CREATED\nprod   c-1   1       env=prod   -\n"
        );
    }
}
