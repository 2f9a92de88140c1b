//! The server's own CA for the agents' mutual TLS, for a setup of four commands: `coffer-server
//! agent-ca init DIR` makes the CA and the server's client certificate, `agent-ca issue DIR
//! --host HOST --out OUT` a node's certificate (the host of its registered address as its name),
//! the agent serves with `--tls-dir OUT` and the server calls agents with `--agent-ca DIR`.
//! Issuing again renews a node's certificate in place: the agent serves the new one without a
//! restart. Any other CA works too, through the `--agent-tls-*` and `--tls-*` settings.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::tls::AgentTlsFiles;

/// The CA's certificate, which agents trust for the server's client certificate and the server
/// for the agents' certificates.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key: never leaves the server's folder.
pub const CA_KEY: &str = "ca.key";
/// The server's client certificate and key, for its calls to agents.
pub const CLIENT_CERT: &str = "server-client.pem";
pub const CLIENT_KEY: &str = "server-client.key";
/// What `issue` writes for a node: its certificate, its key, and the CA to trust.
pub const AGENT_CERT: &str = "agent.pem";
pub const AGENT_KEY: &str = "agent.key";

/// How long the CA is valid.
const CA_DAYS: i64 = 10 * 366;
/// How long the server's client certificate is valid (`init` again renews it: see the docs).
const CLIENT_DAYS: i64 = 2 * 366;

/// Why the CA could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{} exists already: this folder holds a CA (remove it to start afresh)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The server's `--agent-ca` folder as the agent TLS files it stands for.
pub fn tls_files(dir: &Path) -> AgentTlsFiles {
    AgentTlsFiles {
        ca: dir.join(CA_CERT),
        cert: dir.join(CLIENT_CERT),
        key: dir.join(CLIENT_KEY),
    }
}

/// Makes a CA and the server's client certificate in `dir` (created, mode 700). Refused when
/// `dir` holds a CA already: a new CA would orphan every node's certificate.
pub fn init(dir: &Path) -> Result<(), CaError> {
    if dir.join(CA_KEY).exists() {
        return Err(CaError::Exists(dir.join(CA_KEY)));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    set_mode(dir, 0o700)?;
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(DnType::CommonName, "Coffer agents CA");
    validity(&mut params, CA_DAYS)?;
    let ca = CertifiedIssuer::self_signed(params, ca_key)?;
    write_new(&dir.join(CA_KEY), ca_key_pem.as_bytes(), 0o600)?;
    write_new(&dir.join(CA_CERT), ca.pem().as_bytes(), 0o644)?;
    let (cert, key) = leaf(
        &ca,
        "coffer-server",
        ExtendedKeyUsagePurpose::ClientAuth,
        CLIENT_DAYS,
    )?;
    replace(&dir.join(CLIENT_KEY), key.as_bytes(), 0o600)?;
    replace(&dir.join(CLIENT_CERT), cert.as_bytes(), 0o644)?;
    Ok(())
}

/// Issues a node's certificate for `host` (a DNS name or an IP address: the host of the address
/// the node is registered at) from the CA in `dir`, valid for `days`, into `out` (created, mode
/// 700) as `agent.pem`, `agent.key` and `ca.pem`. Files already there are replaced atomically,
/// key first: an agent serving from `out` picks the pair up at its next handshake.
pub fn issue(dir: &Path, host: &str, out: &Path, days: u32) -> Result<(), CaError> {
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    if host.is_empty() || (!is_ip && host.contains(['/', ' ', ':'])) {
        return Err(CaError::Invalid(format!(
            "{host:?} is not a host name or IP address (give the host of the node's address, \
             without a port)"
        )));
    }
    if days == 0 || days > 3 * 366 {
        return Err(CaError::Invalid(
            "a node certificate is valid for 1 to 1098 days".into(),
        ));
    }
    let ca_key_path = dir.join(CA_KEY);
    let ca_key = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_cert_path = dir.join(CA_CERT);
    let ca_cert = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&ca_key)?)?;
    let (cert, key) = leaf(
        &issuer,
        host,
        ExtendedKeyUsagePurpose::ServerAuth,
        i64::from(days),
    )?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    set_mode(out, 0o700)?;
    replace(&out.join(AGENT_KEY), key.as_bytes(), 0o600)?;
    replace(&out.join(AGENT_CERT), cert.as_bytes(), 0o644)?;
    replace(&out.join(CA_CERT), ca_cert.as_bytes(), 0o644)?;
    Ok(())
}

/// A certificate for `name`, for `usage`, signed by `issuer`: its PEM and its key's.
fn leaf<S: rcgen::SigningKey>(
    issuer: &Issuer<'_, S>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
    days: i64,
) -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days)?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Valid from a day ago (clocks drift) for `days` days.
fn validity(params: &mut CertificateParams, days: i64) -> Result<(), CaError> {
    let date = |offset: i64| -> Result<_, CaError> {
        let day = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(24 * offset))
            .map_err(|error| CaError::Invalid(error.to_string()))?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        Ok(rcgen::date_time_ymd(
            i32::from(day.year()),
            day.month().unsigned_abs(),
            day.day().unsigned_abs(),
        ))
    };
    params.not_before = date(-1)?;
    params.not_after = date(days)?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// Creates `path` with `mode`; fails when it exists.
fn write_new(path: &Path, content: &[u8], mode: u32) -> Result<(), CaError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::AlreadyExists => CaError::Exists(path.to_path_buf()),
            _ => CaError::Io {
                path: path.to_path_buf(),
                source: error,
            },
        })?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .map_err(io(path))
}

/// Replaces `path` atomically (a temporary file with `mode`, synced, renamed over it).
fn replace(path: &Path, content: &[u8], mode: u32) -> Result<(), CaError> {
    let temporary = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    write_new(&temporary, content, mode)?;
    std::fs::rename(&temporary, path).map_err(|error| {
        let _ = std::fs::remove_file(&temporary);
        CaError::Io {
            path: path.to_path_buf(),
            source: error,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_ca_issues_node_certificates_and_keeps_its_keys_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("agent-ca");
        init(&ca).expect("init");
        let mode =
            |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&ca), 0o700);
        assert_eq!(mode(&ca.join(CA_KEY)), 0o600);
        assert_eq!(mode(&ca.join(CLIENT_KEY)), 0o600);
        assert!(matches!(init(&ca), Err(CaError::Exists(_))), "init twice");

        let node = dir.path().join("node-1");
        issue(&ca, "10.0.0.11", &node, 365).expect("issue");
        assert_eq!(mode(&node.join(AGENT_KEY)), 0o600);
        let first = std::fs::read(node.join(AGENT_CERT)).expect("cert");
        // Issuing again renews in place, with a new key.
        let key = std::fs::read(node.join(AGENT_KEY)).expect("key");
        issue(&ca, "10.0.0.11", &node, 30).expect("renew");
        assert_ne!(std::fs::read(node.join(AGENT_CERT)).expect("cert"), first);
        assert_ne!(std::fs::read(node.join(AGENT_KEY)).expect("key"), key);
        assert_eq!(
            std::fs::read(node.join(CA_CERT)).expect("ca"),
            std::fs::read(ca.join(CA_CERT)).expect("ca")
        );
        for (host, days) in [
            ("", 30),
            ("db 1", 30),
            ("db1:7400", 30),
            ("db1", 0),
            ("db1", 5000),
        ] {
            assert!(
                matches!(issue(&ca, host, &node, days), Err(CaError::Invalid(_))),
                "{host:?} {days}"
            );
        }
        let error = issue(&dir.path().join("none"), "db1", &node, 30).expect_err("no CA");
        assert!(error.to_string().contains("ca.key"), "{error}");
        assert_eq!(tls_files(&ca).ca, ca.join(CA_CERT));
    }
}
