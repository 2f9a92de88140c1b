//! Objects and manifests in a location, read and written through the cluster's agents (the
//! server never opens storage itself), and the location check.

use std::time::Instant;

use coffer_proto::agent::v1 as agent;
use coffer_proto::agent::v1::agent_service_client::AgentServiceClient;
use futures::StreamExt;
use tonic::transport::Channel;
use uuid::Uuid;

use super::convert::{backup_file, storage_location};
use super::{AgentClients, AgentError, call_error};
use crate::error::{AgentCode, Error, Result};
use crate::model::backup::BackupFile;
use crate::model::location::{CheckStep, Location, NodeLocationCheck};
use crate::model::{AgentAddress, Cluster};

/// The agents a storage call may go through, in turn, and how errors name them: the nodes of a
/// cluster, or one agent named by address (when the catalog knows no cluster yet, as in an
/// import).
#[derive(Debug, Clone)]
pub struct Through<'a> {
    addresses: Vec<&'a AgentAddress>,
    name: String,
}

impl<'a> From<&'a Cluster> for Through<'a> {
    fn from(cluster: &'a Cluster) -> Self {
        Self {
            addresses: cluster
                .nodes
                .iter()
                .map(|node| &node.spec.address)
                .collect(),
            name: format!("cluster {}", cluster.name),
        }
    }
}

impl<'a> From<&'a AgentAddress> for Through<'a> {
    fn from(address: &'a AgentAddress) -> Self {
        Self {
            addresses: vec![address],
            name: format!("the agent at {address}"),
        }
    }
}

/// Asks the agents, in turn, until one succeeds.
async fn with_any_agent<T, F, Fut>(
    agents: &AgentClients,
    through: Through<'_>,
    what: &str,
    call: F,
) -> Result<T>
where
    F: Fn(AgentServiceClient<Channel>) -> Fut,
    Fut: Future<Output = std::result::Result<T, tonic::Status>>,
{
    let mut failures: Vec<AgentError> = Vec::new();
    for address in &through.addresses {
        let client = match agents.client(address) {
            Ok(client) => client,
            Err(error) => {
                failures.push(error);
                continue;
            }
        };
        match call(client).await {
            Ok(value) => return Ok(value),
            Err(status) => {
                let failure = call_error(address, &status);
                if failure.code == AgentCode::NotFound {
                    return Err(Error::NotFound {
                        kind: "object",
                        name: status.message().to_string(),
                    });
                }
                failures.push(failure);
            }
        }
    }
    // The agents agreeing on what is wrong say so with its code; otherwise the storage is
    // unreachable for now.
    let code = match failures.split_first() {
        Some((first, rest)) if rest.iter().all(|f| f.code == first.code) => first.code,
        _ => AgentCode::Unavailable,
    };
    let reasons: Vec<String> = failures.iter().map(ToString::to_string).collect();
    Err(Error::Agent {
        code,
        message: format!(
            "no agent of {} could {what}: {}",
            through.name,
            reasons.join("; ")
        ),
    })
}

/// The names directly below `prefix` (a folder, ending with `/`) in a location, through an
/// agent: files as they are, folders with a trailing `/`, relative to the location's root.
pub async fn list_folder<'a>(
    agents: &AgentClients,
    through: impl Into<Through<'a>>,
    location: &Location,
    prefix: &str,
) -> Result<Vec<String>> {
    with_any_agent(agents, through.into(), "list the location", |mut client| {
        let request = agent::ListObjectsRequest {
            location: Some(storage_location(location)),
            prefix: prefix.to_string(),
            recursive: false,
        };
        async move {
            client
                .list_objects(request)
                .await
                .map(|response| response.into_inner().paths)
        }
    })
    .await
}

/// An object of a location, its stored size and when it was last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Path relative to the location's root.
    pub path: String,
    pub size: u64,
    /// Milliseconds since the Unix epoch; 0 when the storage does not say.
    pub modify_time_ms: i64,
}

/// The pages of a recursive listing, read one at a time from an agent's stream: the listing
/// of a location is never held whole.
pub struct ObjectPages {
    address: AgentAddress,
    stream: tonic::Streaming<agent::ListObjectPagesResponse>,
}

impl std::fmt::Debug for ObjectPages {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ObjectPages")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl ObjectPages {
    /// The next page; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<StoredObject>>> {
        match self.stream.message().await {
            Ok(Some(page)) => Ok(Some(
                page.objects
                    .into_iter()
                    .map(|object| StoredObject {
                        path: object.path,
                        size: object.size,
                        modify_time_ms: object.modify_time_ms,
                    })
                    .collect(),
            )),
            Ok(None) => Ok(None),
            Err(status) => Err(call_error(&self.address, &status).into()),
        }
    }
}

/// Starts a recursive listing of `prefix` (a folder, ending with `/`) through the first agent
/// that answers.
pub async fn list_object_pages<'a>(
    agents: &AgentClients,
    through: impl Into<Through<'a>>,
    location: &Location,
    prefix: &str,
) -> Result<ObjectPages> {
    let through = through.into();
    let mut failures = Vec::new();
    for address in &through.addresses {
        let mut client = match agents.long_client(address) {
            Ok(client) => client,
            Err(error) => {
                failures.push(error.to_string());
                continue;
            }
        };
        let request = agent::ListObjectPagesRequest {
            location: Some(storage_location(location)),
            prefix: prefix.to_string(),
            page_size: 0,
        };
        match client.list_object_pages(request).await {
            Ok(response) => {
                return Ok(ObjectPages {
                    address: (*address).clone(),
                    stream: response.into_inner(),
                });
            }
            Err(status) => failures.push(call_error(address, &status).to_string()),
        }
    }
    Err(Error::Agent {
        code: AgentCode::Unavailable,
        message: format!(
            "no agent of {} could list the location: {}",
            through.name,
            failures.join("; ")
        ),
    })
}

/// What an agent found verifying one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectCondition {
    Intact,
    Missing,
    /// Why it is damaged.
    Damaged(String),
}

/// One object verified by an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedObject {
    pub hash: String,
    pub condition: ObjectCondition,
    pub stored_bytes: u64,
}

/// Has an agent of the cluster download objects (content hashes) of the cluster and verify
/// that each decodes to what its name promises. The agents are tried in turn from the
/// `first`-th (modulo their number), so that batches sent with successive `first` spread
/// over the nodes. Objects are verified as the agent streams its answers; the whole batch's
/// answers are returned at once.
pub async fn verify_objects(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
    first: usize,
    hashes: &[String],
) -> Result<Vec<VerifiedObject>> {
    let mut through = Through::from(cluster);
    if !through.addresses.is_empty() {
        let by = first % through.addresses.len();
        through.addresses.rotate_left(by);
    }
    let mut failures = Vec::new();
    for address in &through.addresses {
        let mut client = match agents.long_client(address) {
            Ok(client) => client,
            Err(error) => {
                failures.push(error.to_string());
                continue;
            }
        };
        let request = agent::VerifyObjectsRequest {
            location: Some(storage_location(location)),
            cluster_id: cluster.id.to_string(),
            hashes: hashes.to_vec(),
        };
        let mut stream = match client.verify_objects(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                failures.push(call_error(address, &status).to_string());
                continue;
            }
        };
        let mut verified = Vec::with_capacity(hashes.len());
        loop {
            match stream.message().await {
                Ok(Some(answer)) => verified.push(verified_object(answer)),
                Ok(None) => {
                    // Every object asked for, once, and nothing else: an agent whose stream
                    // ended early (a crashed verification) does not leave objects unverified
                    // in a run that says it verified them.
                    let asked: std::collections::HashSet<&str> =
                        hashes.iter().map(String::as_str).collect();
                    let mut seen = std::collections::HashSet::new();
                    verified.retain(|object| {
                        asked.contains(object.hash.as_str()) && seen.insert(object.hash.clone())
                    });
                    let answered = verified.len();
                    if answered == asked.len() {
                        return Ok(verified);
                    }
                    failures.push(format!(
                        "{address}: answered for {answered} of {} objects",
                        asked.len()
                    ));
                    break;
                }
                // Half-way through: the objects verified so far are not lost work, but the
                // batch is simplest tried again whole elsewhere.
                Err(status) => {
                    failures.push(call_error(address, &status).to_string());
                    break;
                }
            }
        }
    }
    Err(Error::Agent {
        code: AgentCode::Unavailable,
        message: format!(
            "no agent of {} could verify objects: {}",
            through.name,
            failures.join("; ")
        ),
    })
}

fn verified_object(answer: agent::VerifyObjectsResponse) -> VerifiedObject {
    let condition = match agent::ObjectCondition::try_from(answer.condition) {
        Ok(agent::ObjectCondition::Intact) => ObjectCondition::Intact,
        Ok(agent::ObjectCondition::Missing) => ObjectCondition::Missing,
        Ok(agent::ObjectCondition::Damaged) => ObjectCondition::Damaged(answer.message),
        _ => ObjectCondition::Damaged(format!(
            "the agent reported condition {} ({})",
            answer.condition, answer.message
        )),
    };
    VerifiedObject {
        hash: answer.hash,
        condition,
        stored_bytes: answer.stored_bytes,
    }
}

/// Deletes objects of a location through an agent of the cluster (a missing one counts as
/// deleted); returns how many.
pub async fn delete_objects(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
    paths: &[String],
) -> Result<u64> {
    with_any_agent(
        agents,
        cluster.into(),
        "delete from the location",
        |mut client| {
            let request = agent::DeleteObjectsRequest {
                location: Some(storage_location(location)),
                paths: paths.to_vec(),
            };
            async move {
                client
                    .delete_objects(request)
                    .await
                    .map(|response| response.into_inner().deleted)
            }
        },
    )
    .await
}

/// Writes a small object into a location through an agent.
pub async fn put_object<'a>(
    agents: &AgentClients,
    through: impl Into<Through<'a>>,
    location: &Location,
    path: &str,
    content: Vec<u8>,
) -> Result<()> {
    with_any_agent(
        agents,
        through.into(),
        "write to the location",
        |mut client| {
            let request = agent::PutObjectRequest {
                location: Some(storage_location(location)),
                path: path.to_string(),
                content: content.clone(),
            };
            async move { client.put_object(request).await.map(|_| ()) }
        },
    )
    .await
}

/// Reads a small object from a location through an agent.
pub async fn get_object<'a>(
    agents: &AgentClients,
    through: impl Into<Through<'a>>,
    location: &Location,
    path: &str,
) -> Result<Vec<u8>> {
    with_any_agent(
        agents,
        through.into(),
        "read from the location",
        |mut client| {
            let request = agent::GetObjectRequest {
                location: Some(storage_location(location)),
                path: path.to_string(),
            };
            async move {
                client
                    .get_object(request)
                    .await
                    .map(|r| r.into_inner().content)
            }
        },
    )
    .await
}

/// Deletes an object from a location through an agent of the cluster.
pub async fn delete_object(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
    path: &str,
) -> Result<()> {
    with_any_agent(
        agents,
        cluster.into(),
        "delete from the location",
        |mut client| {
            let request = agent::DeleteObjectRequest {
                location: Some(storage_location(location)),
                path: path.to_string(),
            };
            async move { client.delete_object(request).await.map(|_| ()) }
        },
    )
    .await
}

/// Reads a page of a node manifest (the files of `node_id`) through an agent of the cluster.
pub async fn read_manifest_page(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
    path: &str,
    node_id: Uuid,
    offset: u64,
    limit: u32,
) -> Result<(Vec<BackupFile>, bool)> {
    with_any_agent(
        agents,
        cluster.into(),
        "read the node manifest",
        |mut client| {
            let request = agent::ReadNodeManifestRequest {
                location: Some(storage_location(location)),
                path: path.to_string(),
                offset,
                limit,
            };
            async move {
                client.read_node_manifest(request).await.map(|r| {
                    let r = r.into_inner();
                    let files = r
                        .entries
                        .into_iter()
                        .map(|entry| backup_file(node_id, entry));
                    (files.collect(), r.more)
                })
            }
        },
    )
    .await
}

/// Makes every node of `cluster` write, read, list and delete a probe object in `location`, all
/// nodes at once; each node's result says which steps worked. Probe objects live under
/// `coffer-probe/` and are named for the node and the check, so checks never collide with each
/// other or with backups.
pub async fn check_location(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
) -> Vec<NodeLocationCheck> {
    let check_id = Uuid::now_v7();
    futures::stream::iter(cluster.nodes.iter().cloned())
        .map(|node| async move {
            let node_id = node.info.node_id;
            let address = node.spec.address.clone();
            let mut result = NodeLocationCheck {
                node_id,
                address: address.clone(),
                error: String::new(),
                write: CheckStep::Skipped,
                read: CheckStep::Skipped,
                list: CheckStep::Skipped,
                delete: CheckStep::Skipped,
            };
            let mut client = match agents.client(&address) {
                Ok(client) => client,
                Err(error) => {
                    result.error = error.to_string();
                    return result;
                }
            };
            let storage = storage_location(location);
            let folder = "coffer-probe/".to_string();
            let path = format!("{folder}{node_id}-{check_id}");
            let content =
                format!("coffer location check {check_id} from node {node_id}\n").into_bytes();
            let failed =
                |status: tonic::Status| CheckStep::Failed(call_error(&address, &status).reason);

            let started = Instant::now();
            let written = client
                .put_object(agent::PutObjectRequest {
                    location: Some(storage.clone()),
                    path: path.clone(),
                    content: content.clone(),
                })
                .await;
            result.write = match written {
                Ok(_) => CheckStep::Ok(started.elapsed()),
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && status.message().contains("connect") =>
                {
                    result.error = call_error(&address, &status).to_string();
                    return result;
                }
                Err(status) => {
                    return NodeLocationCheck {
                        write: failed(status),
                        ..result
                    };
                }
            };

            let started = Instant::now();
            result.read = match client
                .get_object(agent::GetObjectRequest {
                    location: Some(storage.clone()),
                    path: path.clone(),
                })
                .await
            {
                Ok(response) if response.get_ref().content == content => {
                    CheckStep::Ok(started.elapsed())
                }
                Ok(_) => {
                    CheckStep::Failed("the probe read back differs from what was written".into())
                }
                Err(status) => failed(status),
            };

            let started = Instant::now();
            result.list = match client
                .list_objects(agent::ListObjectsRequest {
                    location: Some(storage.clone()),
                    prefix: folder.clone(),
                    recursive: false,
                })
                .await
            {
                Ok(response) if response.get_ref().paths.iter().any(|p| p.ends_with(&path)) => {
                    CheckStep::Ok(started.elapsed())
                }
                Ok(_) => CheckStep::Failed("the probe was written but is not listed".into()),
                Err(status) => failed(status),
            };

            let started = Instant::now();
            result.delete = match client
                .delete_object(agent::DeleteObjectRequest {
                    location: Some(storage),
                    path,
                })
                .await
            {
                Ok(_) => CheckStep::Ok(started.elapsed()),
                Err(status) => failed(status),
            };
            result
        })
        .buffered(agents.options().parallelism.max(1))
        .collect()
        .await
}
