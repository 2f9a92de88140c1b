//! Which storage this agent may open, as its own configuration says, whatever a request asks
//! for: an fs location only at or under a configured storage root (symbolic links resolved, so
//! a link inside a root cannot lead out of it), and a secret only towards the endpoints and
//! buckets its `[[credentials]]` entry names. A caller of the agent API can therefore neither
//! make the agent read or write files elsewhere on the node, nor make it sign a request with a
//! node's storage secret to a server of the caller's choosing.

use std::path::{Component, Path, PathBuf};

use coffer_format::storage::{SecretSource, StorageConfig};
use serde::{Deserialize, Serialize};

/// A secret reference (`env:NAME` or `file:/path`) and where it may be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CredentialBinding {
    /// The references this entry covers: `env:AWS_SECRET_ACCESS_KEY`, `file:/etc/coffer/key`.
    pub secrets: Vec<String>,
    /// The endpoints they may be sent to, as the location names them; `""` is the storage
    /// kind's default endpoint (AWS, Google).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The buckets (S3, GCS) or containers (Azure) they may be used with.
    pub buckets: Vec<String>,
}

/// The storage this agent may open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StoragePolicy {
    /// Folders fs locations must be at or under.
    pub roots: Vec<PathBuf>,
    /// Where each secret reference may be used.
    pub credentials: Vec<CredentialBinding>,
    /// Folders no fs location may be in or hold: the data paths and the state directory.
    pub forbidden: Vec<PathBuf>,
    /// The encryption keys, read from their files, and the storage each serves.
    pub keys: Vec<crate::encryption_keys::BoundKey>,
}

impl StoragePolicy {
    /// Why this agent will not open `config`; `Ok` when it may.
    pub fn permit(&self, config: &StorageConfig) -> Result<(), String> {
        permit_settings(config)?;
        if config.scheme == "fs" {
            return self.permit_folder(config);
        }
        let (endpoint, bucket) = endpoint_and_bucket(config);
        for (key, source) in &config.secrets {
            let reference = match source {
                SecretSource::Env(name) => format!("env:{name}"),
                SecretSource::File(path) => format!("file:{}", path.display()),
            };
            let bound = self.credentials.iter().any(|binding| {
                binding.secrets.contains(&reference)
                    && serves_bucket(&binding.endpoints, &binding.buckets, config)
            });
            if !bound {
                return Err(format!(
                    "this agent's configuration binds secret {reference} ({key}) to no endpoint \
                     {endpoint:?} with bucket {bucket:?}: declare it in a [[credentials]] entry \
                     with that endpoint and bucket to use it there"
                ));
            }
        }
        Ok(())
    }

    /// The keys the location `config` is sealed and opened with (see
    /// [`crate::encryption_keys`]); `Err` says why its key cannot be used there.
    pub fn keyring(
        &self,
        config: &StorageConfig,
    ) -> Result<coffer_format::object::Keyring, String> {
        crate::encryption_keys::keyring_for(&self.keys, config)
    }

    /// An fs location's folder must be at or under a storage root, links resolved.
    fn permit_folder(&self, config: &StorageConfig) -> Result<(), String> {
        let Some(root) = config.options.get("root") else {
            return Err("an fs location without a root folder".into());
        };
        let folder = Path::new(root);
        if !folder.is_absolute()
            || folder
                .components()
                .any(|part| matches!(part, Component::ParentDir | Component::CurDir))
        {
            return Err(format!("{root:?} is not an absolute, normal path"));
        }
        let resolved =
            resolve_existing(folder).map_err(|error| format!("resolve {root}: {error}"))?;
        let canonical =
            |path: &PathBuf| std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        if let Some(own) = self
            .forbidden
            .iter()
            .map(canonical)
            .find(|own| resolved.starts_with(own) || own.starts_with(&resolved))
        {
            return Err(format!(
                "{root} overlaps {}, a data path or the state directory of this agent",
                own.display()
            ));
        }
        let inside = self.roots.iter().any(|allowed| {
            let allowed = std::fs::canonicalize(allowed).unwrap_or_else(|_| allowed.clone());
            resolved.starts_with(&allowed)
        });
        if inside {
            Ok(())
        } else if self.roots.is_empty() {
            Err(format!(
                "this agent has no storage root: start it with --storage-root (or storage-roots \
                 in its configuration) naming a folder that holds {root}"
            ))
        } else {
            Err(format!(
                "{root} (resolved: {}) is not under this agent's storage roots ({})",
                resolved.display(),
                self.roots
                    .iter()
                    .map(|root| root.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}

/// The settings a location of each kind may carry, as the server sends them, and which of them
/// may come from secrets. Anything else (an fs `atomic_write_dir` outside the roots, a GCS
/// `credential_path`, an S3 `role_arn`, a secret fed into `endpoint`) is refused.
fn permit_settings(config: &StorageConfig) -> Result<(), String> {
    let (options, secrets): (&[&str], &[&str]) = match config.scheme.as_str() {
        "fs" => (&["root"], &[]),
        "s3" => (
            &[
                "bucket",
                "region",
                "endpoint",
                "root",
                "enable_virtual_host_style",
            ],
            &["access_key_id", "secret_access_key", "session_token"],
        ),
        "azblob" => (
            &["container", "endpoint", "account_name", "root"],
            &["account_key", "sas_token"],
        ),
        "gcs" => (
            &[
                "bucket",
                "endpoint",
                "root",
                "allow_anonymous",
                "disable_vm_metadata",
                "disable_config_load",
            ],
            &["credential"],
        ),
        other => return Err(format!("unknown storage scheme {other:?}")),
    };
    let coffer = coffer_format::storage::COFFER_OPTIONS;
    if let Some(key) = config
        .options
        .keys()
        .find(|key| !options.contains(&key.as_str()) && !coffer.contains(&key.as_str()))
    {
        return Err(format!(
            "the setting {key:?} is not one a {} location has",
            config.scheme
        ));
    }
    if let Some(key) = config
        .secrets
        .keys()
        .find(|key| !secrets.contains(&key.as_str()))
    {
        return Err(format!("the setting {key:?} cannot come from a secret"));
    }
    if let Some(region) = config.options.get("region") {
        let valid = !region.is_empty()
            && region.len() <= 64
            && region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(format!(
                "{region:?} is not a region name (letters, digits and '-')"
            ));
        }
    }
    Ok(())
}

/// The endpoint and the bucket (container, on Azure) an object-store location names.
fn endpoint_and_bucket(config: &StorageConfig) -> (&str, &str) {
    let option = |key: &str| config.options.get(key).map(String::as_str).unwrap_or("");
    let bucket = match config.scheme.as_str() {
        "azblob" => option("container"),
        _ => option("bucket"),
    };
    (option("endpoint"), bucket)
}

/// Whether an object-store location is one of `endpoints` (trailing `/` aside) with one of
/// `buckets`: the binding rule of credentials and encryption keys alike.
pub(crate) fn serves_bucket(
    endpoints: &[String],
    buckets: &[String],
    config: &StorageConfig,
) -> bool {
    let (endpoint, bucket) = endpoint_and_bucket(config);
    endpoints
        .iter()
        .any(|allowed| allowed.trim_end_matches('/') == endpoint.trim_end_matches('/'))
        && buckets.iter().any(|allowed| allowed == bucket)
}

/// `path` resolved as far as it exists (see [`resolve_existing`]), or as given when even that
/// fails.
pub(crate) fn resolved(path: &Path) -> PathBuf {
    resolve_existing(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `path` with its longest existing ancestor's links resolved and the rest appended: what the
/// path will be once the missing folders are created.
fn resolve_existing(path: &Path) -> std::io::Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(resolved) => {
                return Ok(rest
                    .into_iter()
                    .rev()
                    .fold(resolved, |path, part| path.join(part)));
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(ToOwned::to_owned) else {
                    return Err(error);
                };
                rest.push(name);
                if !existing.pop() {
                    return Err(error);
                }
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn location(
        scheme: &str,
        options: &[(&str, &str)],
        secrets: &[(&str, SecretSource)],
    ) -> StorageConfig {
        StorageConfig {
            location_id: "l".into(),
            name: "loc".into(),
            scheme: scheme.into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            secrets: secrets
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn fs_locations_stay_under_the_roots_links_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("backups");
        std::fs::create_dir_all(&root).expect("root");
        let outside = dir.path().join("elsewhere");
        std::fs::create_dir_all(&outside).expect("outside");
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("link");
        let data = root.join("db");
        std::fs::create_dir_all(&data).expect("data");
        let policy = StoragePolicy {
            roots: vec![dir.path().to_path_buf()],
            credentials: Vec::new(),
            forbidden: vec![data.clone()],
            keys: Vec::new(),
        };
        let fs = |path: &Path| location("fs", &[("root", &path.display().to_string())], &[]);
        let narrow = StoragePolicy {
            roots: vec![root.clone()],
            ..policy.clone()
        };
        assert_eq!(narrow.permit(&fs(&root.join("vault"))), Ok(()));
        assert_eq!(
            narrow.permit(&fs(&root.join("new/deeper"))),
            Ok(()),
            "created later"
        );
        assert!(policy.permit(&fs(&data)).is_err(), "a data path");
        assert!(
            policy.permit(&fs(&data.join("x"))).is_err(),
            "inside a data path"
        );
        assert!(policy.permit(&fs(&root)).is_err(), "holding a data path");
        for bad in [
            outside.clone(),
            root.join("link"),
            root.join("link/sub"),
            PathBuf::from("/etc"),
            root.join("../elsewhere"),
        ] {
            assert!(narrow.permit(&fs(&bad)).is_err(), "{}", bad.display());
        }
        let none = StoragePolicy::default();
        assert!(
            none.permit(&fs(&root))
                .expect_err("no root")
                .contains("--storage-root")
        );
    }

    #[test]
    fn only_the_settings_a_location_has_are_accepted() {
        let policy = StoragePolicy::default();
        let fs = location("fs", &[("root", "/x"), ("atomic_write_dir", "/etc/x")], &[]);
        assert!(
            policy
                .permit(&fs)
                .expect_err("refused")
                .contains("atomic_write_dir")
        );
        let gcs = location(
            "gcs",
            &[("bucket", "b"), ("credential_path", "/etc/shadow")],
            &[],
        );
        assert!(
            policy
                .permit(&gcs)
                .expect_err("refused")
                .contains("credential_path")
        );
        let s3 = location(
            "s3",
            &[("bucket", "b")],
            &[(
                "endpoint",
                SecretSource::Env("AWS_SECRET_ACCESS_KEY".into()),
            )],
        );
        assert!(policy.permit(&s3).expect_err("refused").contains("secret"));
        let s3 = location("s3", &[("bucket", "b"), ("region", "x@evil.com/")], &[]);
        assert!(policy.permit(&s3).expect_err("refused").contains("region"));
        let s3 = location(
            "s3",
            &[
                ("bucket", "b"),
                ("region", "eu-west-1"),
                ("timeout_secs", "5"),
            ],
            &[],
        );
        assert_eq!(policy.permit(&s3), Ok(()));
    }

    #[test]
    fn secrets_go_only_where_they_are_bound() {
        let policy = StoragePolicy {
            roots: Vec::new(),
            forbidden: Vec::new(),
            keys: Vec::new(),
            credentials: vec![CredentialBinding {
                secrets: vec!["env:KEY".into(), "env:SECRET".into()],
                endpoints: vec!["https://s3.example.com".into()],
                buckets: vec!["backups".into()],
            }],
        };
        let secrets = [
            ("access_key_id", SecretSource::Env("KEY".into())),
            ("secret_access_key", SecretSource::Env("SECRET".into())),
        ];
        let s3 = |endpoint: &str, bucket: &str| {
            location(
                "s3",
                &[("endpoint", endpoint), ("bucket", bucket)],
                &secrets,
            )
        };
        assert_eq!(
            policy.permit(&s3("https://s3.example.com/", "backups")),
            Ok(())
        );
        assert!(
            policy
                .permit(&s3("http://127.0.0.1:9999", "backups"))
                .is_err(),
            "exfiltration"
        );
        assert!(
            policy
                .permit(&s3("https://s3.example.com", "other"))
                .is_err()
        );
        let anonymous = location("gcs", &[("endpoint", "http://x"), ("bucket", "b")], &[]);
        assert_eq!(
            policy.permit(&anonymous),
            Ok(()),
            "no secret, nothing to leak"
        );
        let other_secret = location(
            "s3",
            &[
                ("endpoint", "https://s3.example.com"),
                ("bucket", "backups"),
            ],
            &[(
                "secret_access_key",
                SecretSource::File("/etc/shadow".into()),
            )],
        );
        assert!(policy.permit(&other_secret).is_err());
    }
}
