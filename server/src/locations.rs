//! Storage locations: named places where backups are kept.
//!
//! The catalog holds a location's kind and options, and secrets only by reference (the name of an
//! environment variable or a file on the nodes): the server never holds a credential, so no
//! response, catalog row or log line can leak one. Agents resolve the references when they open
//! the storage, through [`Location::storage`], which turns a location into OpenDAL settings.

use std::collections::BTreeMap;
use std::time::SystemTime;

use coffer_proto::agent::v1 as agent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use coffer_format::Compression;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::model::{Name, Page};

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

    fn to_agent(&self) -> agent::SecretRef {
        agent::SecretRef {
            source: Some(match self {
                SecretRef::Env(name) => agent::secret_ref::Source::Env(name.clone()),
                SecretRef::File(path) => agent::secret_ref::Source::File(path.clone()),
            }),
        }
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
        /// Access key id.
        access_key_id: Option<SecretRef>,
        /// Secret access key.
        secret_access_key: Option<SecretRef>,
        /// Session token.
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
        /// Account key.
        account_key: Option<SecretRef>,
        /// SAS token.
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
        let check_prefix = |prefix: &str| {
            check_len("prefix", prefix)?;
            if prefix.split('/').any(|part| part == "..") {
                return Err(Error::invalid(
                    format!("{field}.prefix"),
                    "must not contain '..'",
                ));
            }
            Ok(())
        };
        let check_endpoint = |endpoint: &str| {
            check_len("endpoint", endpoint)?;
            let is_url = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !endpoint.is_empty() && !is_url {
                return Err(Error::invalid(
                    format!("{field}.endpoint"),
                    format!("{endpoint:?} is not an http:// or https:// URL"),
                ));
            }
            Ok(())
        };
        match self {
            Self::Fs { path } => {
                require("path", path)?;
                if !path.starts_with('/') {
                    return Err(Error::invalid(
                        format!("{field}.path"),
                        format!("{path:?} is not an absolute path"),
                    ));
                }
                if path.split('/').any(|part| part == "..") {
                    return Err(Error::invalid(
                        format!("{field}.path"),
                        "must not contain '..'",
                    ));
                }
            }
            Self::S3 {
                bucket,
                region,
                endpoint,
                prefix,
                ..
            } => {
                require("bucket", bucket)?;
                check_len("region", region)?;
                check_endpoint(endpoint)?;
                check_prefix(prefix)?;
            }
            Self::Azblob {
                container,
                endpoint,
                account_name,
                prefix,
                ..
            } => {
                require("container", container)?;
                require("endpoint", endpoint)?;
                check_endpoint(endpoint)?;
                check_len("account_name", account_name)?;
                check_prefix(prefix)?;
            }
            Self::Gcs {
                bucket,
                endpoint,
                prefix,
                ..
            } => {
                require("bucket", bucket)?;
                check_endpoint(endpoint)?;
                check_prefix(prefix)?;
            }
        }
        Ok(())
    }
}

/// A registered location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Server-assigned id.
    pub id: Uuid,
    /// Unique name.
    pub name: Name,
    /// Kind and options.
    pub options: LocationOptions,
    /// How agents compress the objects they store there.
    pub compression: Compression,
    /// When it was created.
    pub create_time: SystemTime,
    /// When it last changed.
    pub update_time: SystemTime,
}

impl Location {
    /// The compression agents apply to the objects they store here.
    pub fn object_compression(&self) -> agent::ObjectCompression {
        match self.compression {
            Compression::None => agent::ObjectCompression {
                none: true,
                zstd_level: 0,
            },
            Compression::Zstd { level } => agent::ObjectCompression {
                none: false,
                zstd_level: level,
            },
        }
    }

    /// The location as agents open it: OpenDAL scheme, settings and secret references.
    pub fn storage(&self) -> agent::StorageLocation {
        let mut options = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        let mut set = |key: &str, value: &str| {
            if !value.is_empty() {
                options.insert(key.to_string(), value.to_string());
            }
        };
        let mut secret = |key: &str, value: &Option<SecretRef>| {
            if let Some(reference) = value {
                secrets.insert(key.to_string(), reference.to_agent());
            }
        };
        match &self.options {
            LocationOptions::Fs { path } => set("root", path),
            LocationOptions::S3 {
                bucket,
                region,
                endpoint,
                prefix,
                force_path_style,
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                set("bucket", bucket);
                set(
                    "region",
                    if region.is_empty() {
                        "us-east-1"
                    } else {
                        region
                    },
                );
                set("endpoint", endpoint);
                set("root", &root_of(prefix));
                if !force_path_style {
                    set("enable_virtual_host_style", "true");
                }
                secret("access_key_id", access_key_id);
                secret("secret_access_key", secret_access_key);
                secret("session_token", session_token);
            }
            LocationOptions::Azblob {
                container,
                endpoint,
                account_name,
                prefix,
                account_key,
                sas_token,
            } => {
                set("container", container);
                set("endpoint", endpoint);
                set("account_name", account_name);
                set("root", &root_of(prefix));
                secret("account_key", account_key);
                secret("sas_token", sas_token);
            }
            LocationOptions::Gcs {
                bucket,
                endpoint,
                prefix,
                credential,
                anonymous,
            } => {
                set("bucket", bucket);
                set("endpoint", endpoint);
                set("root", &root_of(prefix));
                if *anonymous {
                    set("allow_anonymous", "true");
                    set("disable_vm_metadata", "true");
                    set("disable_config_load", "true");
                    // Google refuses anonymous writes, so a writable anonymous location is an
                    // emulator: write objects without XML multipart uploads and delete them one
                    // by one, which fake-gcs-server needs (both also work on Google).
                    set("emulator", "fake-gcs-server");
                }
                secret("credential", credential);
            }
        }
        agent::StorageLocation {
            location_id: self.id.to_string(),
            name: self.name.to_string(),
            scheme: self.options.kind().to_string(),
            options: options.into_iter().collect(),
            secrets: secrets.into_iter().collect(),
        }
    }
}

/// A prefix as an OpenDAL root: absolute, ending with `/`.
fn root_of(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        format!("/{trimmed}/")
    }
}

impl LocationOptions {
    /// Where the data is: the settings that, once backups are stored, must not change (the
    /// backups would no longer be found).
    fn data_place(&self) -> Vec<&str> {
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
    /// The node.
    pub node_id: Uuid,
    /// Its agent.
    pub address: crate::model::AgentAddress,
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
    /// Name.
    pub name: Name,
    /// Kind and options.
    pub options: LocationOptions,
    /// How agents compress the objects they store there.
    pub compression: Compression,
}

/// Creates, reads and removes locations.
#[derive(Debug, Clone)]
pub struct LocationRegistry {
    catalog: Catalog,
}

impl LocationRegistry {
    /// A registry over the catalog.
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }

    /// Records a new location. Storage is not contacted (CheckLocation does that).
    ///
    /// Fails with ALREADY_EXISTS when the name is taken.
    pub async fn create(&self, new: NewLocation) -> Result<Location> {
        let now = SystemTime::now();
        let location = Location {
            id: Uuid::now_v7(),
            name: new.name,
            options: new.options,
            compression: new.compression,
            create_time: now,
            update_time: now,
        };
        self.catalog.insert_location(&location).await?;
        tracing::info!(location = %location.name, kind = location.options.kind(), "created location");
        Ok(location)
    }

    /// The location with this name or id; NOT_FOUND otherwise.
    pub async fn get(&self, reference: &str) -> Result<Location> {
        if reference.is_empty() {
            return Err(Error::invalid(
                "location",
                "is required (a location name or id)",
            ));
        }
        self.catalog
            .find_location(reference)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "location",
                name: reference.to_string(),
            })
    }

    /// One page of locations by name.
    pub async fn list(
        &self,
        page_size: u32,
        after: Option<Name>,
        kind: Option<&str>,
    ) -> Result<Page<Location>> {
        self.catalog.list_locations(page_size, after, kind).await
    }

    /// Renames a location or replaces its options, atomically. See the API for the rules.
    pub async fn update(&self, update: LocationUpdate) -> Result<Location> {
        let current = self.get(&update.location).await?;
        if let Some(options) = &update.options
            && options.kind() != current.options.kind()
        {
            return Err(Error::invalid(
                options.kind(),
                format!(
                    "location {} is of kind {}; its kind cannot change",
                    current.name,
                    current.options.kind()
                ),
            ));
        }
        let moves_data = update
            .options
            .as_ref()
            .is_some_and(|options| options.data_place() != current.options.data_place());
        let mut updated = current.clone();
        if let Some(name) = update.name {
            updated.name = name;
        }
        if let Some(options) = update.options {
            updated.options = options;
        }
        if let Some(compression) = update.compression {
            updated.compression = compression;
        }
        updated.update_time = SystemTime::now();
        self.catalog.update_location(&updated, moves_data).await?;
        tracing::info!(location = %updated.name, "updated location");
        Ok(updated)
    }

    /// Removes a location from the catalog (and the catalog's records of its backups); storage
    /// is left alone. Refused while a run uses it.
    pub async fn delete(&self, reference: &str) -> Result<()> {
        let location = self.get(reference).await?;
        self.catalog.delete_location(location.id, reference).await?;
        tracing::info!(location = %location.name, "deleted location");
        Ok(())
    }
}

/// Makes every node of `cluster` write, read, list and delete a probe object in `location`, all
/// nodes at once; each node's result says which steps worked. Probe objects live under
/// `coffer-probe/` and are named for the node and the check, so checks never collide with each
/// other or with backups.
pub async fn check_location(
    agents: &crate::agents::AgentClients,
    cluster: &crate::model::Cluster,
    location: &Location,
) -> Vec<NodeLocationCheck> {
    use futures::StreamExt;

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
            let storage = location.storage();
            let folder = "coffer-probe/".to_string();
            let path = format!("{folder}{node_id}-{check_id}");
            let content =
                format!("coffer location check {check_id} from node {node_id}\n").into_bytes();
            let failed = |status: tonic::Status| {
                CheckStep::Failed(crate::agents::call_error(&address, &status).reason)
            };

            let started = std::time::Instant::now();
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
                    result.error = crate::agents::call_error(&address, &status).to_string();
                    return result;
                }
                Err(status) => {
                    return NodeLocationCheck {
                        write: failed(status),
                        ..result
                    };
                }
            };

            let started = std::time::Instant::now();
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

            let started = std::time::Instant::now();
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

            let started = std::time::Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn location(options: LocationOptions) -> Location {
        Location {
            id: Uuid::nil(),
            name: Name::parse("name", "main").expect("name"),
            options,
            compression: Compression::DEFAULT,
            create_time: SystemTime::UNIX_EPOCH,
            update_time: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn s3_options_become_opendal_settings_without_secret_values() {
        let storage = location(LocationOptions::S3 {
            bucket: "backups".into(),
            region: String::new(),
            endpoint: "http://127.0.0.1:8333".into(),
            prefix: "/team/db/".into(),
            force_path_style: true,
            access_key_id: Some(SecretRef::Env("AWS_KEY".into())),
            secret_access_key: Some(SecretRef::File("/etc/coffer/secret".into())),
            session_token: None,
        })
        .storage();
        assert_eq!(storage.scheme, "s3");
        assert_eq!(storage.options["bucket"], "backups");
        assert_eq!(storage.options["region"], "us-east-1");
        assert_eq!(storage.options["root"], "/team/db/");
        assert!(!storage.options.contains_key("enable_virtual_host_style"));
        assert_eq!(storage.secrets.len(), 2);
        assert!(storage.options.values().all(|v| !v.contains("secret")));
    }

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
