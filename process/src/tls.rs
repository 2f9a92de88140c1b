//! Serving TLS, as both binaries do (the server's API, the agent's API): a certificate and key
//! read again when their files change (looked at, at most, every few seconds, at a handshake),
//! so a renewed certificate is served without a restart; and, when a client CA is given, only
//! callers whose client certificate that CA has signed get past the handshake.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are looked at for a change.
const RECHECK: Duration = Duration::from_secs(5);
/// Longest TLS handshake: a caller that stalls one does not hold a task for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at most: stalled callers cannot use up the process's descriptors.
const MAX_HANDSHAKES: usize = 256;
/// Pause after a failed accept (out of descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The TLS files a server serves with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServeTls {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA (PEM) whose client certificates are required; `None` asks for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// Reads the certificate and key, and the client CA: the TLS settings to serve with (HTTP/2).
/// Fails naming the file that cannot be used.
pub fn server_config(tls: &ServeTls) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Arc::new(ReloadingCert::load(tls, provider.clone())?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?;
    let mut config = match &tls.client_ca {
        None => builder.with_no_client_auth().with_cert_resolver(resolver),
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(client_ca)
                .map_err(|error| format!("read the client CA {}: {error}", client_ca.display()))?
            {
                let cert = cert.map_err(|error| {
                    format!("read the client CA {}: {error}", client_ca.display())
                })?;
                roots.add(cert).map_err(|error| {
                    format!("use the client CA {}: {error}", client_ca.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| format!("use the client CA {}: {error}", client_ca.display()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(resolver)
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts connections on `listener` and hands over those whose handshake succeeded (a caller
/// without an acceptable client certificate is logged and dropped), until `stop` or until the
/// stream is dropped (serving ended); the listener is closed when the returned task ends.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
) -> (
    tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>>,
    tokio::task::JoinHandle<()>,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let task = tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                () = stop.cancelled() => return,
                () = sender.closed() => return,
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => return,
                () = sender.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept a connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%peer, %error, "TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(receiver), task)
}

/// The agent's certificate, read again when its files change.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Vec<Option<SystemTime>>,
    checked: Instant,
}

impl ReloadingCert {
    fn load(tls: &ServeTls, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<Self, String> {
        let key = certified_key(&tls.cert, &tls.key, &provider)?;
        Ok(Self {
            state: Mutex::new(Loaded {
                key: Arc::new(key),
                stamp: stamp(&tls.cert, &tls.key),
                checked: Instant::now(),
            }),
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            provider,
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now != state.stamp {
                match certified_key(&self.cert, &self.key, &self.provider) {
                    Ok(key) => {
                        state.key = Arc::new(key);
                        state.stamp = now;
                        tracing::info!(cert = %self.cert.display(), "serving the renewed certificate");
                    }
                    // Half-written files during a renewal: the old certificate serves meanwhile.
                    Err(error) => {
                        tracing::warn!(%error, "the certificate files changed but cannot be used yet")
                    }
                }
            }
        }
        Some(state.key.clone())
    }
}

fn stamp(cert: &Path, key: &Path) -> Vec<Option<SystemTime>> {
    [cert, key]
        .iter()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("read the certificate {}: {error}", cert.display()))?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| format!("read the key {}: {error}", key.display()))?;
    CertifiedKey::from_der(certs, private, provider).map_err(|error| {
        format!(
            "use the certificate {} and key {}: {error}",
            cert.display(),
            key.display()
        )
    })
}
