//! Storage locations: named places where backups are kept.
//!
//! The catalog holds a location's kind and options, and secrets only by reference (the name of an
//! environment variable or a file on the nodes): the server never holds a credential, so no
//! response, catalog row or log line can leak one. Agents resolve the references when they open
//! the storage (`agents::convert::storage_location` turns a location into OpenDAL settings).

mod rules;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use coffer_format::Compression;

use crate::error::{Error, Result};
use crate::model::{AgentAddress, Name};

/// Longest option value (bucket, endpoint, prefix, path), in bytes.
const MAX_OPTION_LEN: usize = 1024;

/// Where a secret is found on the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretRef {
    /// An environment variable of the agent.
    Env(String),
    /// A file on the node.
    File(String),
}

impl SecretRef {
    /// Validates a reference read from `field`.
    pub fn parse(field: &str, secret: SecretRef) -> Result<Self> {
        match &secret {
            SecretRef::Env(name) => {
                let valid = !name.is_empty()
                    && name.len() <= 256
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(Error::invalid(
                        format!("{field}.env"),
                        "must name an environment variable (letters, digits and '_')",
                    ));
                }
            }
            SecretRef::File(path) => {
                if !path.starts_with('/') || path.len() > MAX_OPTION_LEN || path.contains('\0') {
                    return Err(Error::invalid(
                        format!("{field}.file"),
                        "must be an absolute file path on the nodes",
                    ));
                }
            }
        }
        Ok(secret)
    }
}

/// Kind-specific options of a location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LocationOptions {
    /// A folder on the nodes (local disk, or a shared mount).
    Fs {
        /// Absolute path of the folder.
        path: String,
    },
    /// An S3-compatible bucket.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Region; empty means `us-east-1`.
        region: String,
        /// Endpoint URL; empty means AWS.
        endpoint: String,
        /// Key prefix inside the bucket.
        prefix: String,
        /// Path-style addressing (most S3-compatible servers).
        force_path_style: bool,
        access_key_id: Option<SecretRef>,
        secret_access_key: Option<SecretRef>,
        session_token: Option<SecretRef>,
    },
    /// An Azure Blob Storage container.
    Azblob {
        /// Container name.
        container: String,
        /// Endpoint URL.
        endpoint: String,
        /// Storage account name.
        account_name: String,
        /// Blob name prefix.
        prefix: String,
        account_key: Option<SecretRef>,
        sas_token: Option<SecretRef>,
    },
    /// A Google Cloud Storage bucket.
    Gcs {
        /// Bucket name.
        bucket: String,
        /// Endpoint URL; empty means Google.
        endpoint: String,
        /// Object name prefix.
        prefix: String,
        /// Service account credential (JSON).
        credential: Option<SecretRef>,
        /// No credentials at all (emulators, public buckets).
        anonymous: bool,
    },
}

impl LocationOptions {
    /// The kind's name: `fs`, `s3`, `azblob` or `gcs`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Fs { .. } => "fs",
            Self::S3 { .. } => "s3",
            Self::Azblob { .. } => "azblob",
            Self::Gcs { .. } => "gcs",
        }
    }

    /// Checks the options read from `field` (`fs`, `s3`, ...).
    pub fn validate(&self, field: &str) -> Result<()> {
        let check_len = |name: &str, value: &str| {
            if value.len() > MAX_OPTION_LEN {
                Err(Error::invalid(
                    format!("{field}.{name}"),
                    format!(
                        "is {} bytes long, the limit is {MAX_OPTION_LEN}",
                        value.len()
                    ),
                ))
            } else {
                Ok(())
            }
        };
        let require = |name: &str, value: &str| {
            if value.is_empty() {
                Err(Error::invalid(format!("{field}.{name}"), "is required"))
            } else {
                check_len(name, value)
            }
        };
        // A value breaking its kind's rule, named with the field.
        let rule = |name: &str, value: &str, check: fn(&str) -> std::result::Result<(), String>| {
            check_len(name, value)?;
            check(value).map_err(|reason| Error::invalid(format!("{field}.{name}"), reason))
        };
        let optional =
            |name: &str, value: &str, check: fn(&str) -> std::result::Result<(), String>| {
                if value.is_empty() {
                    Ok(())
                } else {
                    rule(name, value, check)
                }
            };
        match self {
            Self::Fs { path } => {
                require("path", path)?;
                rule("path", path, rules::fs_path)?;
            }
            Self::S3 {
                bucket,
                region,
                endpoint,
                prefix,
                ..
            } => {
                require("bucket", bucket)?;
                rule("bucket", bucket, rules::s3_bucket)?;
                optional("region", region, rules::region)?;
                optional("endpoint", endpoint, rules::endpoint)?;
                rule("prefix", prefix, rules::prefix)?;
            }
            Self::Azblob {
                container,
                endpoint,
                account_name,
                prefix,
                ..
            } => {
                require("container", container)?;
                rule("container", container, rules::azure_container)?;
                require("endpoint", endpoint)?;
                rule("endpoint", endpoint, rules::endpoint)?;
                optional("account_name", account_name, rules::azure_account)?;
                rule("prefix", prefix, rules::prefix)?;
            }
            Self::Gcs {
                bucket,
                endpoint,
                prefix,
                ..
            } => {
                require("bucket", bucket)?;
                rule("bucket", bucket, rules::gcs_bucket)?;
                optional("endpoint", endpoint, rules::endpoint)?;
                rule("prefix", prefix, rules::prefix)?;
            }
        }
        Ok(())
    }
}

/// A registered location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Server-assigned id. Agents key what they remember of the location by
    /// [`journal_key`] of it.
    pub id: Uuid,
    /// Unique name.
    pub name: Name,
    /// Kind and options.
    pub options: LocationOptions,
    /// How agents compress the objects they store there.
    pub compression: Compression,
    /// The agents' key that seals its objects and manifests; `None` in the clear.
    pub encryption_key: Option<Name>,
    /// When it was created.
    pub create_time: SystemTime,
    /// When it last changed.
    pub update_time: SystemTime,
}

impl LocationOptions {
    /// Where the data is: the settings that, once backups are stored, must not change (the
    /// backups would no longer be found).
    pub(crate) fn data_place(&self) -> Vec<&str> {
        match self {
            Self::Fs { path } => vec![path.trim_end_matches('/')],
            Self::S3 { bucket, prefix, .. } => vec![bucket, prefix.trim_matches('/')],
            Self::Azblob {
                container,
                account_name,
                prefix,
                ..
            } => vec![container, account_name, prefix.trim_matches('/')],
            Self::Gcs { bucket, prefix, .. } => vec![bucket, prefix.trim_matches('/')],
        }
    }
}

/// A change to a location, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationUpdate {
    /// Name or id of the location.
    pub location: String,
    /// New name.
    pub name: Option<Name>,
    /// New options (of the same kind).
    pub options: Option<LocationOptions>,
    /// New compression.
    pub compression: Option<Compression>,
    /// New encryption key (a rotation).
    pub encryption_key: Option<Name>,
}

/// One step of a location check on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckStep {
    /// It worked, in this long.
    Ok(std::time::Duration),
    /// It failed with this message.
    Failed(String),
    /// It was not tried (an earlier step failed).
    Skipped,
}

/// What a location check found on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLocationCheck {
    pub node_id: Uuid,
    /// Its agent.
    pub address: AgentAddress,
    /// Why nothing could be tried (agent unreachable), else empty.
    pub error: String,
    /// Writing the probe.
    pub write: CheckStep,
    /// Reading it back.
    pub read: CheckStep,
    /// Listing it.
    pub list: CheckStep,
    /// Deleting it.
    pub delete: CheckStep,
}

impl NodeLocationCheck {
    /// Whether every step worked.
    pub fn ok(&self) -> bool {
        [&self.write, &self.read, &self.list, &self.delete]
            .iter()
            .all(|step| matches!(step, CheckStep::Ok(_)))
    }
}

/// A request to create a location, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLocation {
    pub name: Name,
    /// Kind and options.
    pub options: LocationOptions,
    /// How agents compress the objects they store there.
    pub compression: Compression,
    /// The agents' key that seals its objects and manifests; `None` in the clear.
    pub encryption_key: Option<Name>,
}

/// A query over locations, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListLocations {
    pub page_size: u32,
    /// Resume after the location with this name.
    pub after: Option<Name>,
    /// Only locations of this kind (`fs`, `s3`, `gcs`, `azblob`).
    pub kind: Option<&'static str>,
}

/// The key agents remember a location's objects by, for backups of purge generation
/// `generation`: a purge that deletes objects moves the generation on, so no agent trusts
/// what it remembered from before (the location id alone for generation 0, as before purges).
pub fn journal_key(location_id: Uuid, generation: u64) -> String {
    if generation == 0 {
        location_id.to_string()
    } else {
        format!("{location_id}@purge-{generation}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let bad = LocationOptions::Fs {
            path: "relative".into(),
        };
        let error = bad.validate("fs").expect_err("relative");
        assert!(error.to_string().starts_with("invalid fs.path"), "{error}");
        let bad = LocationOptions::S3 {
            bucket: String::new(),
            region: String::new(),
            endpoint: String::new(),
            prefix: String::new(),
            force_path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
        };
        assert!(
            bad.validate("s3")
                .expect_err("bucket")
                .to_string()
                .contains("s3.bucket")
        );
        assert!(SecretRef::parse("s3.access_key_id", SecretRef::Env("1X".into())).is_err());
        assert!(SecretRef::parse("s3.access_key_id", SecretRef::File("x".into())).is_err());
    }
}
