//! Coffer's Rust SDK.
//!
//! [`CofferClient`] holds one gRPC channel to a Coffer server and hands out a typed client per
//! service of the public API (`coffer.v1`). The channel is cheap to clone and multiplexes every
//! call, so a program keeps one `CofferClient` and asks it for service clients as it needs them.
//! [`to_json`] renders any `coffer.v1` message as canonical proto3 JSON, the mapping grpcurl and
//! other gRPC tools use, so scripts see the same shapes whichever tool they drive.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use coffer_client::{CofferClient, proto};
//!
//! let client = CofferClient::connect("127.0.0.1:50051").await?;
//! let response = client
//!     .clusters()
//!     .get_cluster(proto::GetClusterRequest { cluster: "prod".to_owned() })
//!     .await?
//!     .into_inner();
//! println!("{}", coffer_client::to_json(&response)?);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

use coffer_proto::v1::backup_service_client::BackupServiceClient;
use coffer_proto::v1::cluster_service_client::ClusterServiceClient;
use coffer_proto::v1::location_service_client::LocationServiceClient;
use coffer_proto::v1::restore_service_client::RestoreServiceClient;
use coffer_proto::v1::run_service_client::RunServiceClient;
use coffer_proto::v1::schedule_service_client::ScheduleServiceClient;

mod json;

pub use json::{JsonError, to_json};

/// The public API's generated messages and clients, package `coffer.v1`.
pub use coffer_proto::v1 as proto;

/// How long [`CofferClient::connect`] waits for the TCP connection and HTTP/2 handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a [`CofferClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not `host:port` or `http://host:port`.
    #[error("invalid server address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        reason: String,
    },
    /// The server could not be reached within [`CONNECT_TIMEOUT`].
    #[error("connect to {address}")]
    Connect {
        /// The normalized address, `http://host:port`.
        address: String,
        /// The transport's error; its source chain says why (refused, timed out, ...).
        #[source]
        source: tonic::transport::Error,
    },
}

/// A connection to a Coffer server, handing out one typed client per service.
///
/// Cloning is cheap and shares the underlying channel.
#[derive(Debug, Clone)]
pub struct CofferClient {
    address: String,
    channel: Channel,
}

impl CofferClient {
    /// Connects to the server at `address`: `host:port` or `http://host:port`.
    ///
    /// Fails with [`ClientError::InvalidAddress`] when the address cannot be parsed (or names a
    /// scheme other than `http`), and with [`ClientError::Connect`] when no connection is
    /// established within [`CONNECT_TIMEOUT`]. Once connected, the channel reconnects on its own
    /// and calls report an unreachable server as `UNAVAILABLE`.
    pub async fn connect(address: &str) -> Result<Self, ClientError> {
        let normalized = normalize_address(address)?;
        let endpoint = Endpoint::from_shared(normalized.clone())
            .map_err(|error| ClientError::InvalidAddress {
                address: address.to_owned(),
                reason: error.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                address: normalized.clone(),
                source,
            })?;
        Ok(Self {
            address: normalized,
            channel,
        })
    }

    /// Wraps an existing channel, for callers that configure their own (TLS, interceptors,
    /// timeouts). `address` is only reported back by [`CofferClient::address`].
    pub fn from_channel(address: impl Into<String>, channel: Channel) -> Self {
        Self {
            address: address.into(),
            channel,
        }
    }

    /// The server's normalized address, `http://host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The underlying channel, for generated clients not covered here.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Client of `coffer.v1.ClusterService`: register, list, update, delete and check clusters.
    pub fn clusters(&self) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel.clone())
    }

    /// Client of `coffer.v1.LocationService`: the storage locations backups are written to.
    pub fn locations(&self) -> LocationServiceClient<Channel> {
        LocationServiceClient::new(self.channel.clone())
    }

    /// Client of `coffer.v1.BackupService`: start, list, inspect and delete backups.
    pub fn backups(&self) -> BackupServiceClient<Channel> {
        BackupServiceClient::new(self.channel.clone())
    }

    /// Client of `coffer.v1.RestoreService`: start restores.
    pub fn restores(&self) -> RestoreServiceClient<Channel> {
        RestoreServiceClient::new(self.channel.clone())
    }

    /// Client of `coffer.v1.RunService`: inspect, watch and cancel backup and restore runs.
    pub fn runs(&self) -> RunServiceClient<Channel> {
        RunServiceClient::new(self.channel.clone())
    }

    /// Client of `coffer.v1.ScheduleService`: recurring backups.
    pub fn schedules(&self) -> ScheduleServiceClient<Channel> {
        ScheduleServiceClient::new(self.channel.clone())
    }
}

/// Turns `host:port` or `http://host:port` into `http://host:port`.
///
/// Fails for other schemes (this client speaks plain HTTP/2; use [`CofferClient::from_channel`]
/// for TLS), for a missing host, and for paths or queries, which a gRPC server address never has.
fn normalize_address(address: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let uri = with_scheme
        .parse::<Uri>()
        .map_err(|error| invalid(&error.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid("expected host:port or http://host:port"));
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid("missing host"));
    };
    if authority.host().is_empty() {
        return Err(invalid("missing host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid("a server address has no path or query"));
    }
    Ok(format!("http://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_address_accepts_host_port_and_http_url() {
        assert_eq!(
            normalize_address("127.0.0.1:50051").ok().as_deref(),
            Some("http://127.0.0.1:50051")
        );
        assert_eq!(
            normalize_address("http://coffer.internal:50051/")
                .ok()
                .as_deref(),
            Some("http://coffer.internal:50051")
        );
        assert_eq!(
            normalize_address("[::1]:50051").ok().as_deref(),
            Some("http://[::1]:50051")
        );
    }

    #[test]
    fn normalize_address_rejects_other_schemes_paths_and_garbage() {
        for address in [
            "",
            "https://coffer:50051",
            "http://coffer:50051/v1",
            "coffer:50051?x=1",
            "not an address",
            "http://",
        ] {
            assert!(
                matches!(
                    normalize_address(address),
                    Err(ClientError::InvalidAddress { .. })
                ),
                "{address:?} should be rejected"
            );
        }
    }
}
