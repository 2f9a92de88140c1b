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

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use coffer_proto::v1::backup_service_client::BackupServiceClient;
use coffer_proto::v1::cluster_service_client::ClusterServiceClient;
use coffer_proto::v1::location_service_client::LocationServiceClient;
use coffer_proto::v1::restore_service_client::RestoreServiceClient;
use coffer_proto::v1::run_service_client::RunServiceClient;
use coffer_proto::v1::schedule_service_client::ScheduleServiceClient;
use coffer_proto::v1::token_service_client::TokenServiceClient;

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
    /// TLS settings that cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A token that cannot be sent as an HTTP header (control characters, non-ASCII).
    #[error("the token is not a valid header value")]
    InvalidToken,
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

/// How a [`CofferClient`] speaks TLS: the CA (PEM) that signed the server's certificate, and a
/// client certificate and key (PEM) for a server that asks for one.
#[derive(Clone, Default)]
pub struct TlsSettings {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        formatter
            .debug_struct("TlsSettings")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// The transport every service client of a [`CofferClient`] speaks over: its channel, with the
/// bearer token (if any) added to every call.
pub type Transport = InterceptedService<Channel, Credentials>;

/// Adds `authorization: Bearer <token>` to every call, when a token is set.
#[derive(Clone, Default)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        formatter
            .debug_struct("Credentials")
            .field("token", &self.authorization.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to a Coffer server, handing out one typed client per service.
///
/// Cloning is cheap and shares the underlying channel.
#[derive(Debug, Clone)]
pub struct CofferClient {
    address: String,
    channel: Channel,
    credentials: Credentials,
}

impl CofferClient {
    /// Connects to the server at `address`: `host:port` or `http://host:port`.
    ///
    /// Fails with [`ClientError::InvalidAddress`] when the address cannot be parsed (or names a
    /// scheme other than `http`), and with [`ClientError::Connect`] when no connection is
    /// established within [`CONNECT_TIMEOUT`]. Once connected, the channel reconnects on its own
    /// and calls report an unreachable server as `UNAVAILABLE`.
    pub async fn connect(address: &str) -> Result<Self, ClientError> {
        Self::connect_with(address, None).await
    }

    /// Connects to the server at `address` over TLS when `tls` is given (or the address is
    /// `https://`), trusting the CA `tls` names and presenting its client certificate if any.
    ///
    /// Fails as [`CofferClient::connect`] does, and with [`ClientError::Tls`] for TLS settings
    /// that cannot be used (an https address without a CA, an unreadable certificate).
    pub async fn connect_with(
        address: &str,
        tls: Option<&TlsSettings>,
    ) -> Result<Self, ClientError> {
        let normalized = normalize_address(address, tls.is_some())?;
        let mut endpoint = Endpoint::from_shared(normalized.clone())
            .map_err(|error| ClientError::InvalidAddress {
                address: address.to_owned(),
                reason: error.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT);
        if normalized.starts_with("https://") {
            let Some(tls) = tls else {
                return Err(ClientError::Tls(
                    "an https:// server needs the CA that signed its certificate (--ca-cert)"
                        .to_owned(),
                ));
            };
            // Say which rustls backend TLS uses (several may be linked into a program); one
            // installed already is kept.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|error| ClientError::Tls(error.to_string()))?;
        }
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
            credentials: Credentials::default(),
        })
    }

    /// The same connection, presenting `token` (a bearer secret) with every call.
    ///
    /// Fails with [`ClientError::InvalidToken`] for a token that cannot be an HTTP header value.
    pub fn with_token(mut self, token: &str) -> Result<Self, ClientError> {
        let value = format!("Bearer {}", token.trim())
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| ClientError::InvalidToken)?;
        self.credentials.authorization = Some(value);
        Ok(self)
    }

    /// Wraps an existing channel, for callers that configure their own (TLS, interceptors,
    /// timeouts). `address` is only reported back by [`CofferClient::address`].
    pub fn from_channel(address: impl Into<String>, channel: Channel) -> Self {
        Self {
            address: address.into(),
            channel,
            credentials: Credentials::default(),
        }
    }

    /// The server's normalized address, `http://host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The underlying channel, for generated clients not covered here (without the token:
    /// see [`CofferClient::transport`]).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The channel with this client's token added to every call.
    pub fn transport(&self) -> Transport {
        InterceptedService::new(self.channel.clone(), self.credentials.clone())
    }

    /// Client of `coffer.v1.ClusterService`: register, list, update, delete and check clusters.
    pub fn clusters(&self) -> ClusterServiceClient<Transport> {
        ClusterServiceClient::new(self.transport())
    }

    /// Client of `coffer.v1.LocationService`: the storage locations backups are written to.
    pub fn locations(&self) -> LocationServiceClient<Transport> {
        LocationServiceClient::new(self.transport())
    }

    /// Client of `coffer.v1.BackupService`: start, list, inspect and delete backups.
    pub fn backups(&self) -> BackupServiceClient<Transport> {
        BackupServiceClient::new(self.transport())
    }

    /// Client of `coffer.v1.RestoreService`: start restores.
    pub fn restores(&self) -> RestoreServiceClient<Transport> {
        RestoreServiceClient::new(self.transport())
    }

    /// Client of `coffer.v1.RunService`: inspect, watch and cancel backup and restore runs.
    pub fn runs(&self) -> RunServiceClient<Transport> {
        RunServiceClient::new(self.transport())
    }

    /// Client of `coffer.v1.TokenService`: the API's bearer tokens.
    pub fn tokens(&self) -> TokenServiceClient<Transport> {
        TokenServiceClient::new(self.transport())
    }

    /// Client of `coffer.v1.ScheduleService`: recurring backups.
    pub fn schedules(&self) -> ScheduleServiceClient<Transport> {
        ScheduleServiceClient::new(self.transport())
    }
}

/// Turns `host:port`, `http://host:port` or `https://host:port` into a URL (`host:port` is
/// https when `tls` is set).
///
/// Fails for other schemes, for a missing host, and for paths or queries, which a gRPC server
/// address never has.
fn normalize_address(address: &str, tls: bool) -> Result<String, ClientError> {
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
    } else if tls {
        format!("https://{trimmed}")
    } else {
        format!("http://{trimmed}")
    };
    let uri = with_scheme
        .parse::<Uri>()
        .map_err(|error| invalid(&error.to_string()))?;
    let scheme = match uri.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme,
        _ => {
            return Err(invalid(
                "expected host:port, http://host:port or https://host:port",
            ));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(invalid("missing host"));
    };
    if authority.host().is_empty() {
        return Err(invalid("missing host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid("a server address has no path or query"));
    }
    Ok(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_address_accepts_host_port_and_http_url() {
        assert_eq!(
            normalize_address("127.0.0.1:50051", false).ok().as_deref(),
            Some("http://127.0.0.1:50051")
        );
        assert_eq!(
            normalize_address("http://coffer.internal:50051/", false)
                .ok()
                .as_deref(),
            Some("http://coffer.internal:50051")
        );
        assert_eq!(
            normalize_address("[::1]:50051", false).ok().as_deref(),
            Some("http://[::1]:50051")
        );
        assert_eq!(
            normalize_address("coffer:50051", true).ok().as_deref(),
            Some("https://coffer:50051"),
            "host:port with TLS settings"
        );
        assert_eq!(
            normalize_address("https://coffer:50051", false)
                .ok()
                .as_deref(),
            Some("https://coffer:50051")
        );
    }

    #[test]
    fn normalize_address_rejects_other_schemes_paths_and_garbage() {
        for address in [
            "",
            "ftp://coffer:50051",
            "http://coffer:50051/v1",
            "coffer:50051?x=1",
            "not an address",
            "http://",
        ] {
            assert!(
                matches!(
                    normalize_address(address, false),
                    Err(ClientError::InvalidAddress { .. })
                ),
                "{address:?} should be rejected"
            );
        }
    }
}
