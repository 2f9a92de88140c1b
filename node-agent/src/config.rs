//! The agent's configuration: defaults, then a TOML file, then `COFFER_AGENT_*` environment
//! variables, then flags. [`AgentOptions`] is the partial form every layer parses into;
//! [`AgentConfig`] is the validated result the agent runs with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use coffer_process::Layered;

pub use crate::encryption_keys::KeyBinding;
pub use crate::storage_policy::{CredentialBinding, StoragePolicy};
use serde::{Deserialize, Serialize};

/// Address the agent listens on when nothing else is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
/// State directory when nothing else is configured.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/coffer-agent";

/// One layer of agent settings; every field is optional so layers can be merged.
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentOptions {
    /// Address to serve the agent API on [default: 127.0.0.1:7400].
    #[arg(long, env = "COFFER_AGENT_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Data directory of the database on this node; repeat or separate with commas.
    #[arg(
        long = "data-path",
        env = "COFFER_AGENT_DATA_PATHS",
        value_delimiter = ','
    )]
    pub data_paths: Option<Vec<PathBuf>>,

    /// Directory for the agent's own state: node id, journal, staging
    /// [default: /var/lib/coffer-agent].
    #[arg(long, env = "COFFER_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// The post-restore hooks a restore may name (TOML only: `[restore-hooks]`, a name and the
    /// program with its arguments, e.g. `refresh = ["nodetool", "refresh", "ks", "t"]`). A
    /// restore runs only these: the server sends a name, never a command [default: none].
    #[arg(skip)]
    pub restore_hooks: Option<BTreeMap<String, Vec<String>>>,

    /// Space a restore leaves free on each data path's filesystem, in bytes or with a binary
    /// suffix (K, M, G, T: 512M, 20G): a restore that would leave less is refused before it
    /// downloads anything [default: 0].
    #[arg(long, env = "COFFER_AGENT_RESTORE_KEEP_FREE", value_parser = parse_size)]
    #[serde(deserialize_with = "size_in_file")]
    pub restore_keep_free: Option<u64>,

    /// Folder fs locations may be at or under (links resolved); repeat or separate with commas.
    /// The agent opens no fs location elsewhere [default: none].
    #[arg(
        long = "storage-root",
        env = "COFFER_AGENT_STORAGE_ROOTS",
        value_delimiter = ','
    )]
    pub storage_roots: Option<Vec<PathBuf>>,

    /// Where each storage secret may be sent (TOML only: `[[credentials]]` entries with
    /// `secrets`, `endpoints` and `buckets`). A location that names a secret reference no entry
    /// binds to its endpoint and bucket is refused.
    #[arg(skip)]
    pub credentials: Option<Vec<CredentialBinding>>,

    /// Encryption keys locations may name (TOML only: `[[keys]]` entries with `name`, `file`
    /// and the `roots`, or `endpoints` and `buckets`, they serve). Every key file is read when
    /// the agent starts [default: none].
    #[arg(skip)]
    pub keys: Option<Vec<KeyBinding>>,

    /// Serve the agent API without TLS on an address other than loopback. The agent has no TLS
    /// yet: anyone who reaches such an address can call it, within the storage and data paths
    /// this configuration allows, so it is refused unless asked for [default: false].
    #[arg(
        long,
        env = "COFFER_AGENT_ALLOW_PLAINTEXT",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_plaintext: Option<bool>,

    /// Serve the agent API over mutual TLS with this certificate chain (PEM), which names the
    /// host of the agent's address; needs --tls-key and --tls-client-ca.
    #[arg(long, env = "COFFER_AGENT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "COFFER_AGENT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// The CA (PEM) whose client certificates the agent serves: the Coffer server's. Callers
    /// without one are refused at the handshake.
    #[arg(long, env = "COFFER_AGENT_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve the agent's Prometheus metrics (plain HTTP, GET /metrics) on this address; port 0
    /// picks one, logged as `metrics serving` [default: off].
    #[arg(long, env = "COFFER_AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve mutual TLS with the files `coffer-server agent-ca issue --out DIR` writes:
    /// agent.pem, agent.key and ca.pem; instead of --tls-cert, --tls-key and --tls-client-ca.
    #[arg(long, env = "COFFER_AGENT_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,

    #[command(flatten)]
    #[serde(default)]
    pub snapshot: SnapshotOptions,
}

impl Layered for AgentOptions {
    fn or(self, lower: Self) -> Self {
        Self {
            listen: self.listen.or(lower.listen),
            data_paths: self.data_paths.or(lower.data_paths),
            state_dir: self.state_dir.or(lower.state_dir),
            restore_hooks: self.restore_hooks.or(lower.restore_hooks),
            restore_keep_free: self.restore_keep_free.or(lower.restore_keep_free),
            storage_roots: self.storage_roots.or(lower.storage_roots),
            credentials: self.credentials.or(lower.credentials),
            keys: self.keys.or(lower.keys),
            allow_plaintext: self.allow_plaintext.or(lower.allow_plaintext),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls_client_ca: self.tls_client_ca.or(lower.tls_client_ca),
            tls_dir: self.tls_dir.or(lower.tls_dir),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            snapshot: self.snapshot.or(lower.snapshot),
        }
    }
}

/// How the agent takes a consistent snapshot of the node's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotProviderKind {
    /// Hard-link every file of the data paths into a snapshot folder on the same filesystem.
    Dir,
    /// Run the database's own snapshot command and collect the files it made.
    Command,
    /// Copy SQLite databases with SQLite's online backup API.
    Sqlite,
}

/// Snapshot settings of one layer (the `[snapshot]` table of the TOML file).
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SnapshotOptions {
    /// Snapshot provider [default: dir].
    #[arg(
        long = "snapshot-provider",
        env = "COFFER_AGENT_SNAPSHOT_PROVIDER",
        value_enum
    )]
    pub provider: Option<SnapshotProviderKind>,

    /// `dir`: shell command run before hard-linking (for example `nodetool flush`).
    #[arg(long = "snapshot-pre-hook", env = "COFFER_AGENT_SNAPSHOT_PRE_HOOK")]
    pub pre_hook: Option<String>,

    /// `dir`: shell command run after hard-linking, even when linking failed.
    #[arg(long = "snapshot-post-hook", env = "COFFER_AGENT_SNAPSHOT_POST_HOOK")]
    pub post_hook: Option<String>,

    /// `command`: shell command that takes a snapshot; `{tag}` is replaced by the snapshot tag.
    #[arg(long = "snapshot-command", env = "COFFER_AGENT_SNAPSHOT_COMMAND")]
    pub command: Option<String>,

    /// `command`: shell command that removes the snapshot; `{tag}` is replaced by the tag.
    #[arg(
        long = "snapshot-cleanup-command",
        env = "COFFER_AGENT_SNAPSHOT_CLEANUP_COMMAND"
    )]
    pub cleanup_command: Option<String>,

    /// `command`: glob, relative to each data path, of the files the snapshot command made;
    /// `{tag}` is replaced by the tag (for example `*/*/snapshots/{tag}/**`).
    #[arg(long = "snapshot-files", env = "COFFER_AGENT_SNAPSHOT_FILES")]
    pub files: Option<String>,

    /// `sqlite`: database file to copy, inside a data path; repeat or separate with commas.
    #[arg(
        long = "sqlite-database",
        env = "COFFER_AGENT_SQLITE_DATABASES",
        value_delimiter = ','
    )]
    pub sqlite_databases: Option<Vec<PathBuf>>,
}

impl Layered for SnapshotOptions {
    fn or(self, lower: Self) -> Self {
        Self {
            provider: self.provider.or(lower.provider),
            pre_hook: self.pre_hook.or(lower.pre_hook),
            post_hook: self.post_hook.or(lower.post_hook),
            command: self.command.or(lower.command),
            cleanup_command: self.cleanup_command.or(lower.cleanup_command),
            files: self.files.or(lower.files),
            sqlite_databases: self.sqlite_databases.or(lower.sqlite_databases),
        }
    }
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentConfig {
    /// Address to serve on (port 0 picks a free port, announced on stdout).
    pub listen: SocketAddr,
    /// Absolute data paths, at least one, none inside another.
    pub data_paths: Vec<PathBuf>,
    /// Absolute state directory.
    pub state_dir: PathBuf,
    /// Whether restores may run the hook command the server sends.
    /// The post-restore hooks a restore may name: name -> program and arguments.
    pub restore_hooks: BTreeMap<String, Vec<String>>,
    /// Bytes a restore leaves free on each data path's filesystem.
    pub restore_keep_free: u64,
    /// The storage the agent may open.
    pub storage: StoragePolicy,
    /// Mutual TLS of the agent API; `None` serves plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<coffer_process::tls::ServeTls>,
    /// Where the agent's metrics are served, if anywhere.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// The snapshot provider and its settings.
    pub snapshot: SnapshotConfig,
}

/// The validated snapshot provider settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum SnapshotConfig {
    /// Hard-link the data paths.
    Dir {
        /// Command run before linking.
        #[serde(rename = "pre-hook", skip_serializing_if = "Option::is_none")]
        pre_hook: Option<String>,
        /// Command run after linking.
        #[serde(rename = "post-hook", skip_serializing_if = "Option::is_none")]
        post_hook: Option<String>,
    },
    /// Run the database's snapshot command.
    Command {
        /// Snapshot command with `{tag}`.
        command: String,
        /// Cleanup command with `{tag}`.
        #[serde(rename = "cleanup-command", skip_serializing_if = "Option::is_none")]
        cleanup_command: Option<String>,
        /// Glob of the files the command made.
        files: String,
    },
    /// Copy SQLite databases online.
    Sqlite {
        /// Database files, each inside a data path.
        #[serde(rename = "sqlite-databases")]
        databases: Vec<PathBuf>,
    },
}

impl SnapshotConfig {
    /// Name of the provider as reported in node info.
    pub fn provider_name(&self) -> &'static str {
        match self {
            Self::Dir { .. } => "dir",
            Self::Command { .. } => "command",
            Self::Sqlite { .. } => "sqlite",
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting is missing or has a value the agent cannot run with.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The setting, as named in the TOML file.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

impl AgentOptions {
    /// Fills in the defaults and validates the result.
    ///
    /// Fails when no data path is given, a path is relative, data paths nest, or the snapshot
    /// provider lacks a setting it needs. Paths are checked for shape only: the agent creates its
    /// state directory and checks that data paths exist when it starts.
    pub fn resolve(self) -> Result<AgentConfig, ConfigError> {
        let listen = match self.listen {
            Some(listen) => listen,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| invalid("listen", "bad built-in default"))?,
        };
        let tls = match (
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_client_ca.clone(),
            self.tls_dir.clone(),
        ) {
            (Some(cert), Some(key), Some(client_ca), None) => Some(coffer_process::tls::ServeTls {
                cert,
                key,
                client_ca: Some(client_ca),
            }),
            // The files of `coffer-server agent-ca issue`.
            (None, None, None, Some(dir)) => Some(coffer_process::tls::ServeTls {
                cert: dir.join("agent.pem"),
                key: dir.join("agent.key"),
                client_ca: Some(dir.join("ca.pem")),
            }),
            (None, None, None, None) => None,
            (_, _, _, Some(_)) => {
                return Err(invalid(
                    "tls-dir",
                    "tls-dir stands for tls-cert, tls-key and tls-client-ca: give one or the other",
                ));
            }
            _ => {
                return Err(invalid(
                    "tls-cert",
                    "tls-cert, tls-key and tls-client-ca go together: the agent serves only \
                     callers with a client certificate of the CA it trusts",
                ));
            }
        };
        if tls.is_none() && !listen.ip().is_loopback() && !self.allow_plaintext.unwrap_or(false) {
            return Err(invalid(
                "listen",
                format!(
                    "{listen} is not a loopback address and the agent API has no TLS: give \
                     tls-cert, tls-key and tls-client-ca, or allow-plaintext to say that a \
                     plaintext agent on a trusted network is intended"
                ),
            ));
        }
        let data_paths = self.data_paths.unwrap_or_default();
        if data_paths.is_empty() {
            return Err(invalid(
                "data-paths",
                "at least one data path is required (--data-path or COFFER_AGENT_DATA_PATHS)",
            ));
        }
        for path in &data_paths {
            require_absolute("data-paths", path)?;
        }
        for (index, path) in data_paths.iter().enumerate() {
            for other in &data_paths[index + 1..] {
                if path.starts_with(other) || other.starts_with(path) {
                    return Err(invalid(
                        "data-paths",
                        format!(
                            "{} and {} overlap: data paths must not contain each other",
                            path.display(),
                            other.display()
                        ),
                    ));
                }
            }
        }
        let state_dir = self
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        require_absolute("state-dir", &state_dir)?;
        if data_paths.iter().any(|data| state_dir.starts_with(data)) {
            return Err(invalid(
                "state-dir",
                "must not be inside a data path (it would be backed up and restored over)",
            ));
        }
        let snapshot = resolve_snapshot(self.snapshot, &data_paths)?;
        let roots = self.storage_roots.unwrap_or_default();
        for root in &roots {
            require_absolute("storage-roots", root)?;
            if root.parent().is_none() {
                return Err(invalid(
                    "storage-roots",
                    "must not be '/': name the folder backups go to",
                ));
            }
            if data_paths.iter().any(|data| root.starts_with(data)) {
                return Err(invalid(
                    "storage-roots",
                    format!(
                        "{} is inside a data path: backups must not be stored in the data they \
                         back up",
                        root.display()
                    ),
                ));
            }
        }
        let credentials = self.credentials.unwrap_or_default();
        for binding in &credentials {
            if binding.secrets.is_empty()
                || binding.buckets.is_empty()
                || binding.endpoints.is_empty()
            {
                return Err(invalid(
                    "credentials",
                    "each entry names its secrets, endpoints (\"\" for the default one) and \
                     buckets",
                ));
            }
            if let Some(bad) = binding
                .secrets
                .iter()
                .find(|secret| !(secret.starts_with("env:") || secret.starts_with("file:/")))
            {
                return Err(invalid(
                    "credentials",
                    format!("{bad:?} is neither env:NAME nor file:/absolute/path"),
                ));
            }
        }
        let keys = crate::encryption_keys::load(self.keys.unwrap_or_default())
            .map_err(|reason| invalid("keys", reason))?;
        let restore_hooks = self.restore_hooks.unwrap_or_default();
        for (name, argv) in &restore_hooks {
            let valid_name = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid_name {
                return Err(invalid(
                    "restore-hooks",
                    format!("{name:?}: a hook name is lowercase letters, digits, '-' and '_'"),
                ));
            }
            if argv.first().is_none_or(String::is_empty) {
                return Err(invalid(
                    "restore-hooks",
                    format!("{name}: the program (first element) is required"),
                ));
            }
        }
        let forbidden = data_paths
            .iter()
            .cloned()
            .chain(std::iter::once(state_dir.clone()))
            .collect();
        Ok(AgentConfig {
            listen,
            data_paths,
            state_dir,
            restore_hooks,
            restore_keep_free: self.restore_keep_free.unwrap_or(0),
            storage: StoragePolicy {
                roots,
                credentials,
                forbidden,
                keys,
            },
            tls,
            metrics_listen: self.metrics_listen,
            snapshot,
        })
    }
}

fn resolve_snapshot(
    options: SnapshotOptions,
    data_paths: &[PathBuf],
) -> Result<SnapshotConfig, ConfigError> {
    match options.provider.unwrap_or(SnapshotProviderKind::Dir) {
        SnapshotProviderKind::Dir => Ok(SnapshotConfig::Dir {
            pre_hook: options.pre_hook,
            post_hook: options.post_hook,
        }),
        SnapshotProviderKind::Command => {
            let command = options
                .command
                .ok_or_else(|| invalid("snapshot.command", "required by the `command` provider"))?;
            let files = options
                .files
                .ok_or_else(|| invalid("snapshot.files", "required by the `command` provider"))?;
            Ok(SnapshotConfig::Command {
                command,
                cleanup_command: options.cleanup_command,
                files,
            })
        }
        SnapshotProviderKind::Sqlite => {
            let databases = options.sqlite_databases.unwrap_or_default();
            if databases.is_empty() {
                return Err(invalid(
                    "snapshot.sqlite-databases",
                    "the `sqlite` provider needs at least one database",
                ));
            }
            for database in &databases {
                require_absolute("snapshot.sqlite-databases", database)?;
                if !data_paths.iter().any(|data| database.starts_with(data)) {
                    return Err(invalid(
                        "snapshot.sqlite-databases",
                        format!("{} is not inside a data path", database.display()),
                    ));
                }
            }
            Ok(SnapshotConfig::Sqlite { databases })
        }
    }
}

fn require_absolute(setting: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(invalid(
            setting,
            format!("{} is not an absolute path", path.display()),
        ))
    }
}

/// A size in the configuration file: a number of bytes, or a string as [`parse_size`] reads.
fn size_in_file<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Size::Bytes(bytes)) => Ok(Some(bytes)),
        Some(Size::Text(text)) => parse_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A size in bytes: digits, optionally followed by K, M, G or T (powers of 1024), with an
/// optional `iB` or `B` after it.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512M, 20G or 1000000)"))?;
    let shift = match suffix.trim().trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("{text:?} has an unknown unit (use K, M, G or T)")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(data: &[&str]) -> AgentOptions {
        AgentOptions {
            data_paths: Some(data.iter().map(PathBuf::from).collect()),
            state_dir: Some(PathBuf::from("/var/lib/coffer")),
            ..AgentOptions::default()
        }
    }

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let file: AgentOptions = toml::from_str(
            "listen = \"127.0.0.1:9000\"\ndata-paths = [\"/data\"]\n[snapshot]\nprovider = \"dir\"\npre-hook = \"sync\"\n",
        )
        .expect("parse toml");
        let flags = AgentOptions {
            listen: Some("127.0.0.1:9100".parse().expect("addr")),
            ..AgentOptions::default()
        };
        let config = flags.or(file).resolve().expect("valid");
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.data_paths, vec![PathBuf::from("/data")]);
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(
            config.snapshot,
            SnapshotConfig::Dir {
                pre_hook: Some("sync".into()),
                post_hook: None
            }
        );
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let parsed: Result<AgentOptions, _> = toml::from_str("data-path = [\"/data\"]\n");
        assert!(parsed.is_err());
    }

    #[test]
    fn missing_relative_and_nested_data_paths_are_refused() {
        let error = AgentOptions::default().resolve().expect_err("no data path");
        assert!(error.to_string().starts_with("data-paths"), "{error}");
        let error = options(&["data"]).resolve().expect_err("relative");
        assert!(
            error.to_string().contains("not an absolute path"),
            "{error}"
        );
        let error = options(&["/data", "/data/a"])
            .resolve()
            .expect_err("nested");
        assert!(error.to_string().contains("overlap"), "{error}");
    }

    #[test]
    fn providers_require_their_settings() {
        let mut command = options(&["/data"]);
        command.snapshot.provider = Some(SnapshotProviderKind::Command);
        command.snapshot.command = Some("nodetool snapshot -t {tag}".into());
        let error = command.clone().resolve().expect_err("files missing");
        assert!(error.to_string().starts_with("snapshot.files"), "{error}");
        command.snapshot.files = Some("*/snapshots/{tag}/**".into());
        assert_eq!(
            command.resolve().expect("valid").snapshot.provider_name(),
            "command"
        );

        let mut sqlite = options(&["/data"]);
        sqlite.snapshot.provider = Some(SnapshotProviderKind::Sqlite);
        sqlite.snapshot.sqlite_databases = Some(vec![PathBuf::from("/elsewhere/app.db")]);
        let error = sqlite.resolve().expect_err("outside data paths");
        assert!(
            error.to_string().contains("not inside a data path"),
            "{error}"
        );
    }

    #[test]
    fn restore_hooks_are_refused_unless_allowed() {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: AgentOptions,
        }
        let parse = |args: &[&str]| {
            let cli = <Cli as clap::Parser>::try_parse_from(
                ["coffer-agent", "--data-path", "/data"].iter().chain(args),
            )
            .expect("parse flags");
            cli.options
        };
        assert!(
            parse(&[])
                .resolve()
                .expect("valid")
                .restore_hooks
                .is_empty()
        );
        let file: AgentOptions = toml::from_str(
            "data-paths = [\"/data\"]\n[restore-hooks]\nrefresh = [\"nodetool\", \"refresh\"]\n",
        )
        .expect("parse toml");
        assert_eq!(
            file.resolve().expect("valid").restore_hooks["refresh"],
            ["nodetool", "refresh"]
        );
        for bad in [
            "[restore-hooks]\nrefresh = []\n",
            "[restore-hooks]\nrefresh = [\"\"]\n",
            "[restore-hooks]\n\"Bad Name\" = [\"true\"]\n",
        ] {
            let file: AgentOptions =
                toml::from_str(&format!("data-paths = [\"/data\"]\n{bad}")).expect("parse toml");
            assert!(file.resolve().is_err(), "{bad}");
        }
    }

    #[test]
    fn state_dir_inside_a_data_path_is_refused() {
        let mut options = options(&["/data"]);
        options.state_dir = Some(PathBuf::from("/data/.coffer"));
        assert!(options.resolve().is_err());
    }

    #[test]
    fn sizes_read_with_binary_units_in_flags_and_files() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("3T"), Ok(3 << 40));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
        let file: AgentOptions =
            toml::from_str("data-paths = [\"/data\"]\nrestore-keep-free = \"1G\"\n")
                .expect("parse");
        assert_eq!(file.restore_keep_free, Some(1 << 30));
        let file: AgentOptions =
            toml::from_str("data-paths = [\"/data\"]\nrestore-keep-free = 4096\n").expect("parse");
        assert_eq!(file.restore_keep_free, Some(4096));
    }
}
