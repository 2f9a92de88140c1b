//! Process plumbing shared by `coffer-server`, `coffer-agent` and `cofferctl`.
//!
//! Configuration is layered the same way in every binary: built-in defaults, then a TOML file,
//! then environment variables, then command-line flags. Each binary has one partial options
//! struct (every field optional) that derives both `serde::Deserialize` and `clap::Args`; the file
//! layer and the environment-and-flags layer are each parsed into it and merged here, and the
//! result is validated once into the binary's resolved configuration.

pub mod http;
pub mod tls;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Reads a TOML configuration file into the binary's partial options.
///
/// Fails when the file cannot be read, is not valid TOML, or has keys the options do not know
/// (a misspelt key must not be silently ignored).
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read configuration file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parse configuration file {}", path.display()))
}

/// Fills every unset field of `self` from a lower layer.
pub trait Layered {
    /// Keeps the fields set in `self`, takes the others from `lower`.
    fn or(self, lower: Self) -> Self;
}

/// Installs the global tracing subscriber: human-readable lines on stderr, filtered by `RUST_LOG`
/// (default `info`). Standard output stays free for data and announcements.
pub fn init_tracing() {
    init_tracing_as(LogFormat::Text);
}

/// How the binaries write their logs to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields` with `message`, and
    /// the spans), for journald, Loki or Elasticsearch.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is not a log format: use text or json")),
        }
    }
}

/// [`init_tracing`] in the given format.
pub fn init_tracing_as(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second initialisation (tests, embedded agent in dev mode) is harmless: keep the first.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM.
///
/// If a signal handler cannot be installed the error is logged and that signal is ignored
/// rather than shutting down at once.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "install SIGINT handler");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "install SIGTERM handler");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("received SIGINT, shutting down"),
        () = terminate => tracing::info!("received SIGTERM, shutting down"),
    }
}

/// Writes a line to standard output, ignoring failures: a closed or full stdout (a supervisor
/// that stopped reading) must not take a server down, and `println!` would panic.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// Parses a human duration such as `5s`, `250ms` or `1m 30s`, for clap value parsers.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("invalid duration {text:?}: {error}"))
}

/// Serde adapter for optional human durations (`"5s"`), for `#[serde(with = ...)]`.
pub mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Deserializes `"5s"` into `Some(5s)`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| super::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }

    /// Serializes `Some(5s)` as `"5s"`.
    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => {
                serializer.serialize_str(&humantime::format_duration(*duration).to_string())
            }
            None => serializer.serialize_none(),
        }
    }
}

/// Serde adapter for human durations (`"5s"`), for resolved configurations.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Deserializes `"5s"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    /// Serializes as `"5s"`.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }
}

/// Reads a file that holds a secret: it must be absolute and neither readable nor writable by
/// group or others (mode 600 or stricter), so that a secret left world-readable is noticed at
/// start rather than after it leaked.
///
/// Fails, with a message naming the file, when it is not so or cannot be read.
pub fn read_private_file(file: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;

    if !file.is_absolute() {
        return Err(format!("secret file {} is not absolute", file.display()));
    }
    let metadata = std::fs::metadata(file)
        .map_err(|error| format!("secret file {}: {error}", file.display()))?;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "secret file {} is readable or writable by group or others (mode {:o}); chmod 600 it",
            file.display(),
            mode & 0o777
        ));
    }
    std::fs::read_to_string(file)
        .map_err(|error| format!("secret file {}: {error}", file.display()))
}

/// The error and its sources on one line, `: `-separated, skipping a source that repeats its
/// parent: what a warning or a user's error message shows (never a backtrace, never Debug).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = one_line(&error.to_string());
    let mut previous = line.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = one_line(&cause.to_string());
        if !text.is_empty() && !previous.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        previous = text;
        source = cause.source();
    }
    line
}

/// Joins the lines of a message with `; ` so an error report stays one line.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
