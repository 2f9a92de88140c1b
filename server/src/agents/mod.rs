//! Calls to node agents: the only part of the server that speaks the agent protocol.
//!
//! [`AgentClients`] is the connection pool; the submodules hold the calls, by what they do:
//! [`storage`] (objects and manifests in a location, location checks), [`stored`] (the format
//! marker and commit manifests), [`snapshot`] (snapshots
//! and uploads), [`restore`] (a node's restore), with [`convert`] translating between the domain
//! and `coffer.agent.v1`. Failures come back as [`AgentError`]: the agent's address, what kind
//! of failure the agent reported ([`AgentCode`]) and its message.
//!
//! The server keeps one lazily connected channel per agent address and bounds every call by a
//! connect timeout and a request timeout, so an agent that hangs cannot hang a request. Calls
//! to many agents run concurrently, at most `parallelism` at once, and report per address:
//! one unreachable agent never hides the answers of the others.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coffer_proto::agent::v1 as proto;
use coffer_proto::agent::v1::agent_service_client::AgentServiceClient;
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::error::{AgentCode, Error};
use crate::model::run::NodeUpdate;
use crate::model::{AgentAddress, DataPath, NodeInfo};

pub mod ca;
pub mod convert;
pub mod restore;
pub mod snapshot;
pub mod storage;
pub mod stored;
pub mod tls;

/// Why an agent call failed, as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address}: {reason}")]
pub struct AgentError {
    /// The agent's address.
    pub address: AgentAddress,
    /// What kind of failure the agent (or the transport to it) reported.
    pub code: AgentCode,
    /// What went wrong, from the transport or the agent.
    pub reason: String,
}

impl AgentError {
    fn new(address: &AgentAddress, code: AgentCode, reason: impl Into<String>) -> Self {
        Self {
            address: address.clone(),
            code,
            reason: reason.into(),
        }
    }
}

impl From<AgentError> for Error {
    fn from(error: AgentError) -> Self {
        Error::Agent {
            code: error.code,
            message: error.to_string(),
        }
    }
}

/// Timeouts and parallelism of agent calls.
#[derive(Debug, Clone, Copy)]
pub struct AgentCallOptions {
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for an answer.
    pub request_timeout: Duration,
    /// Most agents called at once.
    pub parallelism: usize,
}

/// A pool of channels to node agents.
#[derive(Debug)]
pub struct AgentClients {
    options: AgentCallOptions,
    /// Mutual TLS towards every agent; `None` speaks plaintext.
    tls: Option<tls::AgentTls>,
    /// Channels with the TLS generation they were made with.
    channels: Mutex<HashMap<AgentAddress, (Channel, u64)>>,
    long_channels: Mutex<HashMap<AgentAddress, (Channel, u64)>>,
}

/// A node info answer and how long it took.
#[derive(Debug, Clone)]
pub struct InfoAnswer {
    /// What the agent reported.
    pub info: NodeInfo,
    /// Tags of the snapshots the agent keeps (run ids).
    pub snapshot_tags: Vec<String>,
    /// Round trip of the call.
    pub latency: Duration,
}

impl AgentClients {
    /// A pool with the given call options, speaking plaintext.
    pub fn new(options: AgentCallOptions) -> Self {
        Self::with_tls(options, None)
    }

    /// A pool with the given call options, speaking mutual TLS when `tls` is given.
    pub fn with_tls(options: AgentCallOptions, tls: Option<tls::AgentTls>) -> Self {
        Self {
            options,
            tls,
            channels: Mutex::new(HashMap::new()),
            long_channels: Mutex::new(HashMap::new()),
        }
    }

    /// An endpoint for `address` (https with the current TLS settings when TLS is on) and the
    /// TLS generation it was made with.
    fn endpoint(&self, address: &AgentAddress) -> Result<(Endpoint, u64), AgentError> {
        let Some(tls) = &self.tls else {
            let endpoint = Endpoint::from_shared(address.as_str().to_string())
                .map_err(|error| unusable(address, &error))?;
            return Ok((endpoint, 0));
        };
        let (config, generation) = tls.current();
        let url = address.as_str().replacen("http://", "https://", 1);
        let endpoint = Endpoint::from_shared(url)
            .map_err(|error| unusable(address, &error))?
            .tls_config(config)
            .map_err(|error| unusable(address, &error))?;
        Ok((endpoint, generation))
    }

    /// The TLS generation channels must have now.
    fn generation(&self) -> u64 {
        self.tls.as_ref().map_or(0, |tls| tls.current().1)
    }

    /// A client for short calls: each is bounded by the request timeout.
    fn client(&self, address: &AgentAddress) -> Result<AgentServiceClient<Channel>, AgentError> {
        Ok(AgentServiceClient::new(self.channel(address)?).max_decoding_message_size(MAX_MESSAGE))
    }

    /// A client for long calls (snapshots, uploads): only connecting is bounded; the caller
    /// bounds the call, or cancels it.
    fn long_client(
        &self,
        address: &AgentAddress,
    ) -> Result<AgentServiceClient<Channel>, AgentError> {
        let mut channels = self
            .long_channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = self.generation();
        let channel = match channels.get(address) {
            Some((channel, made)) if *made == generation => channel.clone(),
            _ => {
                let (endpoint, made) = self.endpoint(address)?;
                let channel = endpoint
                    .connect_timeout(self.options.connect_timeout)
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(20))
                    .connect_lazy();
                channels.insert(address.clone(), (channel.clone(), made));
                channel
            }
        };
        Ok(AgentServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
    }

    /// The call options.
    pub fn options(&self) -> AgentCallOptions {
        self.options
    }

    fn channel(&self, address: &AgentAddress) -> Result<Channel, AgentError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = self.generation();
        if let Some((channel, made)) = channels.get(address)
            && *made == generation
        {
            return Ok(channel.clone());
        }
        let (endpoint, made) = self.endpoint(address)?;
        let channel = endpoint
            .connect_timeout(self.options.connect_timeout)
            .timeout(self.options.request_timeout)
            .connect_lazy();
        channels.insert(address.clone(), (channel.clone(), made));
        Ok(channel)
    }

    /// Asks one agent for its node info.
    pub async fn node_info(&self, address: &AgentAddress) -> Result<InfoAnswer, AgentError> {
        let mut client = self.client(address)?;
        let started = Instant::now();
        let call = client.get_node_info(proto::GetNodeInfoRequest {});
        // The channel's own timeout covers the request; this also bounds connecting.
        let budget = self.options.connect_timeout + self.options.request_timeout;
        let response = match tokio::time::timeout(budget, call).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(call_error(address, &status)),
            Err(_) => {
                return Err(AgentError::new(
                    address,
                    AgentCode::DeadlineExceeded,
                    format!("no answer within {budget:?}"),
                ));
            }
        };
        let latency = started.elapsed();
        let node = response.node.ok_or_else(|| {
            AgentError::new(address, AgentCode::Internal, "the agent sent no node info")
        })?;
        let node_id = Uuid::parse_str(&node.node_id).map_err(|_| {
            AgentError::new(
                address,
                AgentCode::Internal,
                format!("the agent reported an invalid node id {:?}", node.node_id),
            )
        })?;
        Ok(InfoAnswer {
            info: NodeInfo {
                node_id,
                hostname: node.hostname,
                data_paths: node
                    .data_paths
                    .into_iter()
                    .map(|path| DataPath {
                        path: path.path,
                        free_bytes: path.free_bytes,
                        total_bytes: path.total_bytes,
                    })
                    .collect(),
                agent_version: node.agent_version,
            },
            snapshot_tags: node.snapshot_tags,
            latency,
        })
    }

    /// Asks every agent for its node info, concurrently; answers come back in input order.
    pub async fn node_infos(
        &self,
        addresses: &[AgentAddress],
    ) -> Vec<Result<InfoAnswer, AgentError>> {
        futures::stream::iter(addresses.iter().cloned())
            .map(|address| async move { self.node_info(&address).await })
            .buffered(self.options.parallelism.max(1))
            .collect()
            .await
    }
}

/// Largest message accepted from an agent (manifest pages, small objects).
const MAX_MESSAGE: usize = 80 * 1024 * 1024;

fn unusable(address: &AgentAddress, error: &dyn std::fmt::Display) -> AgentError {
    AgentError::new(
        address,
        AgentCode::Unavailable,
        format!("unusable address: {error}"),
    )
}

/// One message of a long call's response stream.
enum LongCallEvent<S> {
    /// How far the agent is.
    Progress(NodeUpdate),
    /// The call's summary: its last message.
    Done(S),
    /// A message this server does not know (from a newer agent): skipped.
    Unknown,
}

/// Follows a long call's response stream to its summary, sending its progress to `updates`.
/// `what` names the call in errors; `aftermath` says what becomes of the node's work when the
/// agent is lost in the middle (killed, its host gone, the network cut).
async fn follow_long_call<M, S>(
    address: &AgentAddress,
    what: &str,
    aftermath: &str,
    mut stream: tonic::Streaming<M>,
    updates: &tokio::sync::mpsc::Sender<NodeUpdate>,
    event: impl Fn(M) -> LongCallEvent<S>,
) -> Result<S, AgentError> {
    loop {
        match stream.message().await {
            Ok(Some(message)) => match event(message) {
                LongCallEvent::Progress(update) => {
                    let _ = updates.send(update).await;
                }
                LongCallEvent::Done(summary) => return Ok(summary),
                LongCallEvent::Unknown => {}
            },
            Ok(None) => {
                return Err(AgentError::new(
                    address,
                    AgentCode::Internal,
                    format!("the agent ended the {what} without a summary"),
                ));
            }
            Err(status) => {
                return Err(match lost_contact(&status) {
                    Some(how) => AgentError::new(
                        address,
                        AgentCode::Unavailable,
                        format!(
                            "lost contact with the agent during the {what} ({how}); {aftermath}"
                        ),
                    ),
                    None => call_error(address, &status),
                });
            }
        }
    }
}

/// How the connection to an agent was lost, when `status` comes from the transport rather than
/// from the agent (a status the agent sends has no source error): the raw HTTP/2 text (`h2
/// protocol error: ... broken pipe`) says less to an operator than this.
fn lost_contact(status: &tonic::Status) -> Option<&'static str> {
    let source = std::error::Error::source(status)?;
    let mut text = source.to_string();
    let mut cause = source.source();
    while let Some(next) = cause {
        text.push_str(&next.to_string());
        cause = next.source();
    }
    let text = format!("{} {text}", status.message()).to_lowercase();
    Some(if text.contains("refused") {
        "connection refused"
    } else if text.contains("timed out") || text.contains("deadline") {
        "no answer in time"
    } else if text.contains("reset") || text.contains("broken pipe") || text.contains("closed") {
        "the connection broke"
    } else {
        "the connection failed"
    })
}

/// Describes a failed call in one line (the status message and the transport's cause), keeping
/// the kind of failure.
fn call_error(address: &AgentAddress, status: &tonic::Status) -> AgentError {
    let mut reason = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = cause.source();
    }
    if reason.is_empty() {
        reason = format!("{:?}", status.code());
    }
    AgentError::new(address, convert::agent_code(status.code()), reason)
}
