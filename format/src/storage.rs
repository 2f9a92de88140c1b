//! A backup location's storage: its configuration, its secrets, and the OpenDAL operator that
//! reaches it.
//!
//! Why it is shaped this way:
//! - The catalog and every API response hold a location's options but never its secrets: a secret
//!   is named by reference ([`SecretSource`]: an environment variable or a file on the node) and
//!   resolved only where storage is accessed, on the agent, just before the operator is built.
//!   Errors name the setting and the reference, never the value.
//! - Every operator wears the same layers, innermost first: timeout (so a hung request fails),
//!   concurrency limit (so one agent cannot flood a backend), retry with jittered exponential
//!   backoff (transient errors only: OpenDAL marks network failures, timeouts, 5xx and throttling
//!   as temporary; bad credentials or a missing bucket are permanent and fail at once), and
//!   logging (through the `log` facade, at debug level for successes).
//! - On the `fs` backend objects are written to a temporary folder inside the root and renamed into
//!   place when complete (`atomic_write_dir`), so an object is never visible half-written, exactly
//!   as on object stores where a PUT or a completed multipart upload is atomic. This also makes
//!   `Writer::abort` work on `fs`: without it OpenDAL writes in place and cannot abort.
//!
//! Invariants: [`open_operator`] returns an operator only for a known scheme whose settings are all
//! known to that backend (a misspelt option is an error, not a silent default); its errors are
//! [`StorageError`]s that carry the location's name and the backend's own message, and say whether
//! trying again could help ([`StorageError::is_retryable`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opendal::layers::{ConcurrentLimitLayer, LoggingLayer, RetryLayer, TimeoutLayer};
use opendal::{Configurator, ErrorKind, Operator, services};
use serde::{Deserialize, Serialize};

/// Name of the temporary folder, inside an `fs` location's root, where objects whose hash is not
/// known yet (and manifests) are written before being renamed into place; objects whose hash is
/// known are written next to their final name instead (see `object::TEMPORARY_SUFFIX`). It is not
/// part of the layout: a restore never reads it, and uploads remove what was left in it by writers
/// that stopped mid-write (see `object::remove_stale_temporaries`).
pub const FS_ATOMIC_WRITE_DIR: &str = ".coffer-tmp";

/// Settings of Coffer itself (not of the backend) that a location's `options` may hold.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `retry_max_times` | 4 | retries of a transient failure (jittered exponential backoff, 200 ms to 10 s) |
/// | `timeout_secs` | 60 | limit of one metadata operation (stat, delete, list page) |
/// | `io_timeout_secs` | 120 | limit of one read or write call (one part of a multipart upload) |
/// | `concurrent_limit` | 256 | operations in flight (an open writer, reader or lister holds one) |
/// | `http_concurrent_limit` | 32 | HTTP requests in flight |
/// | `emulator` | none | `azurite` or `fake-gcs-server`: see [`BackendQuirks`] |
pub const COFFER_OPTIONS: &[&str] = &[
    "retry_max_times",
    "timeout_secs",
    "io_timeout_secs",
    "concurrent_limit",
    "http_concurrent_limit",
    "emulator",
    // The name of the agent's key that seals the location's objects (see `object::Keyring`).
    "encryption_key",
];

const DEFAULT_RETRY_MAX_TIMES: usize = 4;
const DEFAULT_TIMEOUT_SECS: u64 = 60;
const DEFAULT_IO_TIMEOUT_SECS: u64 = 120;
const DEFAULT_CONCURRENT_LIMIT: usize = 256;
const DEFAULT_HTTP_CONCURRENT_LIMIT: usize = 32;

/// Where the value of a secret setting comes from. Only the reference is ever stored or shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretSource {
    /// An environment variable of the process that accesses storage (the agent).
    Env(String),
    /// A file on the node; one trailing newline is ignored.
    File(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(formatter, "environment variable {name}"),
            Self::File(path) => write!(formatter, "file {}", path.display()),
        }
    }
}

/// Everything needed to reach one backup location, minus the secret values.
///
/// `options` are the backend's own settings under OpenDAL's names (for `s3`: `bucket`, `root`,
/// `endpoint`, `region`, `enable_virtual_host_style`, ...; for `fs`: `root`, `atomic_write_dir`)
/// plus Coffer's own ([`COFFER_OPTIONS`]). `secrets` map a setting (say `secret_access_key`) to
/// where its value is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageConfig {
    /// Stable id of the location in the catalog.
    pub location_id: String,
    /// Name operators know the location by; every error names it.
    pub name: String,
    /// `fs`, `s3`, `azblob` or `gcs`.
    pub scheme: String,
    /// Backend settings that are not secret.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Secret backend settings, by reference.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
}

/// Secret values read for one location. Its `Debug` shows the settings, never the values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ResolvedSecrets {
    values: BTreeMap<String, String>,
}

impl ResolvedSecrets {
    /// The value of one secret setting.
    pub fn get(&self, setting: &str) -> Option<&str> {
        self.values.get(setting).map(String::as_str)
    }

    /// Settings and values, in setting order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values
            .iter()
            .map(|(setting, value)| (setting.as_str(), value.as_str()))
    }
}

impl std::fmt::Debug for ResolvedSecrets {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_map()
            .entries(self.values.keys().map(|setting| (setting, "<redacted>")))
            .finish()
    }
}

/// How a backend departs from the real service it stands in for. Hooks for local emulators
/// (Azurite, fake-gcs-server), set with the `emulator` option; real services need none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendQuirks {
    /// Whether large objects may be written in chunks (multipart, block list, resumable upload).
    /// fake-gcs-server fails chunked writes: write in one request there.
    pub chunked_writes: bool,
    /// Whether deletes may be batched. fake-gcs-server fails batch deletes.
    pub batch_deletes: bool,
}

impl Default for BackendQuirks {
    fn default() -> Self {
        Self {
            chunked_writes: true,
            batch_deletes: true,
        }
    }
}

impl StorageConfig {
    /// Reads every secret this location refers to.
    ///
    /// Fails on the first secret that cannot be read (an unset or non-Unicode environment
    /// variable, a missing or unreadable file, an empty value), naming the setting and the
    /// reference but never the value.
    pub fn resolve_secrets(&self) -> Result<ResolvedSecrets, StorageError> {
        let mut values = BTreeMap::new();
        for (setting, source) in &self.secrets {
            let value = read_secret(source).map_err(|reason| StorageError::Secret {
                location: self.name.clone(),
                setting: setting.clone(),
                reference: source.to_string(),
                reason,
            })?;
            values.insert(setting.clone(), value);
        }
        Ok(ResolvedSecrets { values })
    }

    /// The quirks of this location's backend (see [`BackendQuirks`]).
    pub fn quirks(&self) -> BackendQuirks {
        match self.options.get("emulator").map(String::as_str) {
            Some("fake-gcs-server") => BackendQuirks {
                chunked_writes: false,
                batch_deletes: false,
            },
            _ => BackendQuirks::default(),
        }
    }

    fn config_error(&self, reason: impl Into<String>) -> StorageError {
        StorageError::Config {
            location: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn coffer_option<T: std::str::FromStr>(
        &self,
        key: &str,
        default: T,
    ) -> Result<T, StorageError> {
        match self.options.get(key) {
            None => Ok(default),
            Some(text) => text.trim().parse().map_err(|_| {
                self.config_error(format!("option {key} = {text:?} is not a valid number"))
            }),
        }
    }
}

fn read_secret(source: &SecretSource) -> Result<String, String> {
    let mut value = match source {
        SecretSource::Env(name) => match std::env::var(name) {
            Ok(value) => value,
            Err(std::env::VarError::NotPresent) => return Err("it is not set".into()),
            Err(std::env::VarError::NotUnicode(_)) => return Err("it is not valid Unicode".into()),
        },
        SecretSource::File(path) => std::fs::read_to_string(path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::InvalidData {
                "it is not valid UTF-8".to_string()
            } else {
                error.to_string()
            }
        })?,
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err("it is empty".into());
    }
    Ok(value)
}

/// Why a storage operation failed.
///
/// Every variant names the location. [`StorageError::Backend`] carries OpenDAL's error, whose
/// message is the backend's own (an S3 error code and message, an OS error, ...).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A secret the location refers to cannot be read.
    #[error(
        "location {location:?}: setting {setting} refers to {reference}, which cannot be read: {reason}"
    )]
    Secret {
        /// Name of the location.
        location: String,
        /// The setting the secret is for, such as `secret_access_key`.
        setting: String,
        /// Where the value was looked for, such as `environment variable AWS_SECRET_ACCESS_KEY`.
        reference: String,
        /// Why it could not be read (never the value).
        reason: String,
    },
    /// The location's configuration is not usable (unknown scheme or setting, bad number).
    #[error("location {location:?}: {reason}")]
    Config {
        /// Name of the location.
        location: String,
        reason: String,
    },
    /// The backend refused or failed an operation.
    #[error("location {location:?}: {operation} {path:?} failed: {cause}")]
    Backend {
        /// Name of the location (or `scheme://name/root` where only the operator was at hand,
        /// until [`StorageError::in_location`] names it).
        location: String,
        /// What was being done: `open`, `stat`, `read`, `write`, `list`, ...
        operation: &'static str,
        /// Path of the object or prefix, relative to the location's root.
        path: String,
        /// OpenDAL's error: its kind, whether it is temporary, and the backend's message (boxed:
        /// it is large, and errors travel in every `Result`).
        cause: Box<opendal::Error>,
    },
}

impl StorageError {
    /// Wraps an OpenDAL error of an operation on `path` through `op`.
    pub fn backend(
        op: &Operator,
        operation: &'static str,
        path: impl Into<String>,
        cause: opendal::Error,
    ) -> Self {
        Self::Backend {
            location: describe_operator(op),
            operation,
            path: path.into(),
            cause: Box::new(cause),
        }
    }

    /// A failure of a local folder's file system during an operation on `path` through `op`.
    pub fn local(
        op: &Operator,
        operation: &'static str,
        path: &str,
        error: std::io::Error,
    ) -> Self {
        let kind = match error.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Unexpected,
        };
        Self::backend(
            op,
            operation,
            path,
            opendal::Error::new(kind, error.to_string()),
        )
    }

    /// The same error, naming the location `name` (as configured) instead of the operator's
    /// description.
    pub fn in_location(mut self, name: &str) -> Self {
        match &mut self {
            Self::Secret { location, .. }
            | Self::Config { location, .. }
            | Self::Backend { location, .. } => *location = name.to_string(),
        }
        self
    }

    /// Name of the location the error is about.
    pub fn location(&self) -> &str {
        match self {
            Self::Secret { location, .. }
            | Self::Config { location, .. }
            | Self::Backend { location, .. } => location,
        }
    }

    /// Whether trying the same thing again later could succeed: network failures, timeouts,
    /// throttling and server errors, including those the retry layer already retried without
    /// success. Configuration, secrets, credentials (permission denied), a missing bucket or
    /// object are permanent: they need a person, not another try.
    ///
    /// Decided by the error's kind, not by OpenDAL's temporary/permanent status: the retry layer
    /// marks every error that leaves it "persistent", whether it was retried or not, so past the
    /// layer the status no longer tells a retried network failure from a permanent refusal.
    /// `Unexpected` errors (network failures, timeouts, 5xx, but also requests the server refused
    /// for other reasons) count as retryable unless explicitly permanent: a few useless retries
    /// of a bad request cost less than giving up on a flaky network.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Secret { .. } | Self::Config { .. } => false,
            Self::Backend { cause, .. } => match cause.kind() {
                ErrorKind::RateLimited | ErrorKind::Unexpected | ErrorKind::Conflict => {
                    !cause.is_permanent()
                }
                _ => false,
            },
        }
    }

    /// The opposite of [`StorageError::is_retryable`].
    pub fn is_permanent(&self) -> bool {
        !self.is_retryable()
    }

    /// Whether the object (or, for a read of an absent root or bucket, its container) does not
    /// exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Backend { cause, .. } if cause.kind() == ErrorKind::NotFound)
    }
}

/// `scheme://name/root` of an operator: how errors name a location when only the operator is at
/// hand (`s3://bucket/root/`, `fs:///var/backups/`).
pub fn describe_operator(op: &Operator) -> String {
    let info = op.info();
    format!("{}://{}{}", info.scheme(), info.name(), info.root())
}

/// Builds the operator of a location: its backend from `scheme` and `options` plus the resolved
/// secrets, wearing Coffer's layers (see the module documentation).
///
/// For `fs`, `root` is required; the root folder and the temporary folder of atomic writes
/// (`<root>/.coffer-tmp` unless `atomic_write_dir` says otherwise) are created when missing.
///
/// Fails when a secret cannot be read, when the scheme is not `fs`, `s3`, `azblob` or `gcs`, when
/// an option is unknown to the backend (OpenDAL would ignore it), given both as an option and as a
/// secret, or invalid, or when the backend refuses the configuration (such as an `fs` root that
/// cannot be created). Nothing is sent over the network here: bad credentials or a missing bucket
/// show up on the first operation.
pub fn open_operator(config: &StorageConfig) -> Result<Operator, StorageError> {
    // Registers the services and the reqwest HTTP transport (OpenDAL does this from a constructor
    // only with its default features). Idempotent and cheap.
    opendal::install_default();

    let secrets = config.resolve_secrets()?;
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &config.options {
        if !COFFER_OPTIONS.contains(&key.as_str()) {
            settings.insert(key.clone(), value.clone());
        }
    }
    for (setting, value) in secrets.iter() {
        if settings.contains_key(setting) {
            return Err(config.config_error(format!(
                "setting {setting} is given both as an option and as a secret"
            )));
        }
        settings.insert(setting.to_string(), value.to_string());
    }

    let operator = match config.scheme.as_str() {
        "fs" => {
            let root = settings
                .get("root")
                .filter(|root| !root.is_empty())
                .ok_or_else(|| config.config_error("the fs backend needs a root option"))?
                .clone();
            if !Path::new(&root).is_absolute() {
                return Err(
                    config.config_error(format!("the fs root {root:?} is not an absolute path"))
                );
            }
            settings
                .entry("atomic_write_dir".into())
                .or_insert_with(|| {
                    Path::new(&root)
                        .join(FS_ATOMIC_WRITE_DIR)
                        .to_string_lossy()
                        .into_owned()
                });
            build::<services::FsConfig>(config, settings)?
        }
        // Credentials are only ever the ones a location names: OpenDAL's own search (the
        // process environment, ~/.aws, instance and VM metadata, Azure's environment) would hand
        // a node's credentials to whatever endpoint a location names. Without named ones,
        // requests go unsigned.
        "s3" => {
            settings.insert("disable_config_load".into(), "true".into());
            settings.insert("disable_ec2_metadata".into(), "true".into());
            if !settings.contains_key("access_key_id") {
                settings.insert("allow_anonymous".into(), "true".into());
            }
            build::<services::S3Config>(config, settings)?
        }
        "azblob" => {
            if !config.secrets.contains_key("account_key")
                && !config.secrets.contains_key("sas_token")
            {
                settings.insert("skip_signature".into(), "true".into());
            }
            build::<services::AzblobConfig>(config, settings)?
        }
        "gcs" => {
            settings.insert("disable_config_load".into(), "true".into());
            settings.insert("disable_vm_metadata".into(), "true".into());
            if !settings.contains_key("credential") {
                settings.insert("allow_anonymous".into(), "true".into());
            }
            build::<services::GcsConfig>(config, settings)?
        }
        other => {
            return Err(config.config_error(format!(
                "unknown storage scheme {other:?} (expected fs, s3, azblob or gcs)"
            )));
        }
    };

    let retry_max_times = config.coffer_option("retry_max_times", DEFAULT_RETRY_MAX_TIMES)?;
    let timeout = config.coffer_option("timeout_secs", DEFAULT_TIMEOUT_SECS)?;
    let io_timeout = config.coffer_option("io_timeout_secs", DEFAULT_IO_TIMEOUT_SECS)?;
    let concurrent_limit = config.coffer_option("concurrent_limit", DEFAULT_CONCURRENT_LIMIT)?;
    let http_concurrent_limit =
        config.coffer_option("http_concurrent_limit", DEFAULT_HTTP_CONCURRENT_LIMIT)?;
    if timeout == 0 || io_timeout == 0 || concurrent_limit == 0 || http_concurrent_limit == 0 {
        return Err(config.config_error("timeouts and concurrency limits must be positive"));
    }
    if let Some(emulator) = config.options.get("emulator")
        && !matches!(emulator.as_str(), "azurite" | "fake-gcs-server")
    {
        return Err(config.config_error(format!(
            "unknown emulator {emulator:?} (expected azurite or fake-gcs-server)"
        )));
    }

    Ok(operator
        .layer(
            TimeoutLayer::new()
                .with_timeout(Duration::from_secs(timeout))
                .with_io_timeout(Duration::from_secs(io_timeout)),
        )
        .layer(
            ConcurrentLimitLayer::new(concurrent_limit)
                .with_http_concurrent_limit(http_concurrent_limit),
        )
        .layer(
            RetryLayer::new()
                .with_jitter()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_max_times(retry_max_times)
                .with_notify(RetryNotice),
        )
        .layer(LoggingLayer::new(TracingInterceptor)))
}

/// Says that a storage request is tried again, in one warning line. OpenDAL's own notice prints
/// the error with `{:?}`, which with `RUST_BACKTRACE=1` is a backtrace per retry: one outage of
/// a few minutes made thousands of lines.
#[derive(Debug, Clone, Copy)]
struct RetryNotice;

impl opendal::layers::RetryInterceptor for RetryNotice {
    fn intercept(&self, event: opendal::layers::RetryEvent<'_>) {
        tracing::warn!(
            target: "coffer_format::storage",
            operation = %event.op,
            attempt = event.attempt,
            retry_in_ms = u64::try_from(event.retry_after.as_millis()).unwrap_or(u64::MAX),
            error = %event.err,
            "storage request failed; trying again"
        );
    }
}

/// Logs storage operations through `tracing`, quietly: failures at DEBUG, because every caller
/// handles (and, where it matters, logs) its errors with the location's name, and a missing
/// object is the everyday answer of a "does the location have it?" check, not a warning.
#[derive(Debug, Clone, Copy)]
struct TracingInterceptor;

impl opendal::layers::LoggingInterceptor for TracingInterceptor {
    fn log(
        &self,
        info: &opendal::raw::ServiceInfo,
        operation: opendal::raw::Operation,
        context: &[(&str, &str)],
        message: &str,
        err: Option<&opendal::Error>,
    ) {
        let path = context
            .iter()
            .find(|(key, _)| *key == "path")
            .map(|(_, value)| *value)
            .unwrap_or_default();
        match err {
            Some(error) => tracing::debug!(
                target: "coffer_format::storage",
                scheme = %info.scheme(),
                name = %info.name(),
                %operation,
                path,
                %error,
                "{message}"
            ),
            None => tracing::trace!(
                target: "coffer_format::storage",
                scheme = %info.scheme(),
                %operation,
                path,
                "{message}"
            ),
        }
    }
}

/// Builds an operator of one backend from its settings, refusing settings the backend does not
/// know (OpenDAL's configuration ignores them, so a typo would silently fall back to a default).
fn build<C>(
    config: &StorageConfig,
    settings: BTreeMap<String, String>,
) -> Result<Operator, StorageError>
where
    C: Configurator + Default + Serialize,
{
    let known = match serde_json::to_value(C::default()) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    if let Some(unknown) = settings
        .keys()
        .find(|key| !known.contains_key(key.as_str()))
    {
        let mut names: Vec<&str> = known.keys().map(String::as_str).collect();
        names.extend(COFFER_OPTIONS);
        names.sort_unstable();
        return Err(config.config_error(format!(
            "the {} backend has no setting {unknown:?} (known: {})",
            config.scheme,
            names.join(", ")
        )));
    }
    let backend_config = C::from_iter(settings).map_err(|cause| StorageError::Backend {
        location: config.name.clone(),
        operation: "configure",
        path: String::new(),
        cause: Box::new(cause),
    })?;
    Operator::new(backend_config.into_builder()).map_err(|cause| StorageError::Backend {
        location: config.name.clone(),
        operation: "open",
        path: String::new(),
        cause: Box::new(cause),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs_config(root: &Path) -> StorageConfig {
        StorageConfig {
            location_id: "loc-1".into(),
            name: "local".into(),
            scheme: "fs".into(),
            options: BTreeMap::from([("root".into(), root.to_string_lossy().into_owned())]),
            secrets: BTreeMap::new(),
        }
    }

    #[test]
    fn secrets_resolve_from_files_without_their_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let unix = dir.path().join("unix");
        let windows = dir.path().join("windows");
        let two = dir.path().join("two");
        std::fs::write(&unix, "s3cr3t\n").expect("write");
        std::fs::write(&windows, "s3cr3t\r\n").expect("write");
        std::fs::write(&two, "s3cr3t\n\n").expect("write");
        let mut config = fs_config(dir.path());
        config.secrets = BTreeMap::from([
            ("a".into(), SecretSource::File(unix)),
            ("b".into(), SecretSource::File(windows)),
            ("c".into(), SecretSource::File(two)),
        ]);
        let secrets = config.resolve_secrets().expect("resolve");
        assert_eq!(secrets.get("a"), Some("s3cr3t"));
        assert_eq!(secrets.get("b"), Some("s3cr3t"));
        assert_eq!(secrets.get("c"), Some("s3cr3t\n"));
        assert!(!format!("{secrets:?}").contains("s3cr3t"));
    }

    #[test]
    fn secrets_resolve_from_the_environment() {
        // A variable every test process has: setting one would need unsafe code.
        let path = std::env::var("PATH").expect("PATH is set");
        let mut config = fs_config(Path::new("/tmp"));
        config.secrets = BTreeMap::from([("token".into(), SecretSource::Env("PATH".into()))]);
        let secrets = config.resolve_secrets().expect("resolve");
        assert_eq!(secrets.get("token"), Some(path.trim_end_matches('\n')));
    }

    #[test]
    fn unreadable_secrets_are_named_by_setting_and_reference() {
        let mut config = fs_config(Path::new("/tmp"));
        config.secrets = BTreeMap::from([(
            "secret_access_key".into(),
            SecretSource::Env("COFFER_TEST_SURELY_UNSET_VARIABLE".into()),
        )]);
        let error = config.resolve_secrets().expect_err("unset variable");
        let message = error.to_string();
        assert!(message.contains("\"local\""), "{message}");
        assert!(message.contains("secret_access_key"), "{message}");
        assert!(
            message.contains("environment variable COFFER_TEST_SURELY_UNSET_VARIABLE"),
            "{message}"
        );
        assert!(message.contains("not set"), "{message}");
        assert!(!error.is_retryable());

        config.secrets = BTreeMap::from([(
            "account_key".into(),
            SecretSource::File("/nonexistent/coffer/key".into()),
        )]);
        let message = config
            .resolve_secrets()
            .expect_err("missing file")
            .to_string();
        assert!(message.contains("account_key"), "{message}");
        assert!(
            message.contains("file /nonexistent/coffer/key"),
            "{message}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        config.secrets = BTreeMap::from([("account_key".into(), SecretSource::File(empty))]);
        let message = config.resolve_secrets().expect_err("empty").to_string();
        assert!(message.contains("empty"), "{message}");
    }

    #[test]
    fn secret_sources_serialize_as_tagged_references() {
        let source = SecretSource::Env("AWS_SECRET_ACCESS_KEY".into());
        let json = serde_json::to_string(&source).expect("encode");
        assert_eq!(json, r#"{"env":"AWS_SECRET_ACCESS_KEY"}"#);
        assert_eq!(
            serde_json::from_str::<SecretSource>(r#"{"file":"/etc/coffer/key"}"#).expect("decode"),
            SecretSource::File("/etc/coffer/key".into())
        );
    }

    #[tokio::test]
    async fn fs_locations_create_their_root_and_write_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("a/b/location");
        let op = open_operator(&fs_config(&root)).expect("open");
        assert!(root.is_dir());
        assert!(root.join(FS_ATOMIC_WRITE_DIR).is_dir());

        let mut writer = op.writer("clusters/x/object").await.expect("writer");
        writer.write(vec![1u8; 1000]).await.expect("write");
        assert!(
            !root.join("clusters/x/object").exists(),
            "visible before close"
        );
        writer.abort().await.expect("abort");
        assert!(!root.join("clusters/x/object").exists());
        let leftovers = std::fs::read_dir(root.join(FS_ATOMIC_WRITE_DIR))
            .expect("read tmp")
            .count();
        assert_eq!(leftovers, 0);

        op.write("clusters/x/object", vec![2u8; 10])
            .await
            .expect("write");
        assert_eq!(
            std::fs::read(root.join("clusters/x/object")).expect("read"),
            vec![2u8; 10]
        );
    }

    #[tokio::test]
    async fn reads_below_a_missing_root_fail_with_a_named_permanent_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("location");
        let op = open_operator(&fs_config(&root)).expect("open");
        std::fs::remove_dir_all(&root).expect("remove root");

        let error = op
            .read("coffer.json")
            .await
            .map_err(|cause| StorageError::backend(&op, "read", "coffer.json", cause))
            .expect_err("root is gone")
            .in_location("local");
        assert!(error.is_not_found(), "{error}");
        assert!(error.is_permanent());
        let message = error.to_string();
        assert!(message.contains("\"local\""), "{message}");
        assert!(message.contains("coffer.json"), "{message}");
        assert!(message.contains("NotFound"), "{message}");
    }

    #[test]
    fn bad_configurations_are_refused_before_any_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = fs_config(dir.path());
        config.scheme = "ftp".into();
        let message = open_operator(&config).expect_err("scheme").to_string();
        assert!(
            message.contains("unknown storage scheme \"ftp\""),
            "{message}"
        );

        let mut config = fs_config(dir.path());
        config.options.insert("roott".into(), "/x".into());
        let message = open_operator(&config).expect_err("typo").to_string();
        assert!(message.contains("no setting \"roott\""), "{message}");

        let mut config = fs_config(dir.path());
        config.options.insert("timeout_secs".into(), "soon".into());
        let message = open_operator(&config).expect_err("number").to_string();
        assert!(message.contains("timeout_secs"), "{message}");

        let mut config = fs_config(Path::new("relative/root"));
        config.location_id = "x".into();
        assert!(open_operator(&config).is_err());

        let s3 = StorageConfig {
            location_id: "loc-2".into(),
            name: "s3".into(),
            scheme: "s3".into(),
            options: BTreeMap::from([
                ("bucket".into(), "b".into()),
                ("secret_access_key".into(), "inline".into()),
            ]),
            secrets: BTreeMap::from([(
                "secret_access_key".into(),
                SecretSource::Env("PATH".into()),
            )]),
        };
        let message = open_operator(&s3).expect_err("twice").to_string();
        assert!(
            message.contains("both as an option and as a secret"),
            "{message}"
        );
    }

    #[test]
    fn every_cloud_scheme_builds_offline() {
        for (scheme, options) in [
            (
                "s3",
                vec![
                    ("bucket", "b"),
                    ("region", "us-east-1"),
                    ("endpoint", "http://127.0.0.1:1"),
                ],
            ),
            (
                "azblob",
                vec![
                    ("container", "c"),
                    ("endpoint", "http://127.0.0.1:1/acct"),
                    ("account_name", "acct"),
                ],
            ),
            (
                "gcs",
                vec![
                    ("bucket", "b"),
                    ("endpoint", "http://127.0.0.1:1"),
                    ("allow_anonymous", "true"),
                    ("disable_vm_metadata", "true"),
                ],
            ),
        ] {
            let config = StorageConfig {
                location_id: scheme.into(),
                name: scheme.into(),
                scheme: scheme.into(),
                options: options
                    .into_iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
                secrets: BTreeMap::new(),
            };
            let op = open_operator(&config).unwrap_or_else(|error| panic!("{scheme}: {error}"));
            assert_eq!(op.info().scheme(), scheme);
        }
    }

    #[tokio::test]
    async fn unreachable_endpoints_are_retryable_errors_naming_the_location() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("bind")
            .port();
        let config = StorageConfig {
            location_id: "loc".into(),
            name: "offline-s3".into(),
            scheme: "s3".into(),
            options: BTreeMap::from([
                ("bucket".into(), "b".into()),
                ("region".into(), "us-east-1".into()),
                ("endpoint".into(), format!("http://127.0.0.1:{port}")),
                ("access_key_id".into(), "key".into()),
                ("secret_access_key".into(), "secret".into()),
                ("disable_config_load".into(), "true".into()),
                ("retry_max_times".into(), "0".into()),
            ]),
            secrets: BTreeMap::new(),
        };
        let op = open_operator(&config).expect("open");
        let error = op
            .stat("coffer.json")
            .await
            .map_err(|cause| StorageError::backend(&op, "stat", "coffer.json", cause))
            .expect_err("nothing listens")
            .in_location(&config.name);
        assert!(error.is_retryable(), "{error}");
        assert!(!error.is_not_found());
        assert!(error.to_string().contains("\"offline-s3\""), "{error}");
    }

    #[test]
    fn emulator_quirks_are_read_from_the_options() {
        let mut config = fs_config(Path::new("/tmp"));
        assert_eq!(config.quirks(), BackendQuirks::default());
        config
            .options
            .insert("emulator".into(), "fake-gcs-server".into());
        assert!(!config.quirks().chunked_writes);
        assert!(!config.quirks().batch_deletes);
    }
}
