//! The encryption keys of this agent (`[[keys]]` in its configuration) and the storage each may
//! be used with. A location names a key (its `encryption_key` setting); the agent seals and
//! names what it stores there with that key only when an entry binds it to the location's
//! folder, or endpoint and bucket, and opens what any key bound to the location sealed (earlier
//! keys kept after a rotation). A caller of the agent API can thus neither learn a key nor have
//! data sealed with it towards storage the configuration does not name.
//!
//! A key file holds 64 hex digits (`openssl rand -hex 32 > key; chmod 600 key`); one readable
//! by group or others is refused, and the agent reads every key file when it starts, so a
//! missing or malformed one stops it at once rather than failing the first backup.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_format::object::{Keyring, ObjectKey};
use coffer_format::storage::StorageConfig;
use serde::{Deserialize, Serialize};

/// The location setting that names the key its objects are sealed with.
pub const ENCRYPTION_KEY_OPTION: &str = "encryption_key";

/// A `[[keys]]` entry: a named key file and the storage it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeyBinding {
    /// The name locations give (`encryption_key`): lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// The key file: 64 hex digits, readable by its owner only.
    pub file: PathBuf,
    /// Folders of fs locations it serves (at or under, links resolved).
    #[serde(default)]
    pub roots: Vec<PathBuf>,
    /// Endpoints of object-store locations it serves, as the location names them; `""` is the
    /// storage kind's default endpoint.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Buckets (S3, GCS) or containers (Azure) it serves, with one of `endpoints`.
    #[serde(default)]
    pub buckets: Vec<String>,
}

/// A key read from its file, with its binding. Shown and compared by binding and key id only.
#[derive(Clone)]
pub struct BoundKey {
    pub binding: KeyBinding,
    pub key: Arc<ObjectKey>,
}

impl std::fmt::Debug for BoundKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BoundKey")
            .field("binding", &self.binding)
            .field("id", &self.key.id())
            .finish()
    }
}

impl PartialEq for BoundKey {
    fn eq(&self, other: &Self) -> bool {
        self.binding == other.binding && self.key.id() == other.key.id()
    }
}

impl Eq for BoundKey {}

impl Serialize for BoundKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.binding.serialize(serializer)
    }
}

/// Reads and checks the key of every entry. Fails naming the entry (never the key) when a name
/// is invalid or taken twice, an entry binds nothing, or a key file is missing, readable by
/// others or not 64 hex digits.
pub fn load(bindings: Vec<KeyBinding>) -> Result<Vec<BoundKey>, String> {
    let mut loaded: Vec<BoundKey> = Vec::with_capacity(bindings.len());
    for mut binding in bindings {
        let name = &binding.name;
        // The rule of the server's names, so that a location can name every key.
        let valid_name = name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid_name {
            return Err(format!(
                "{name:?}: a key name is 1 to 63 lowercase letters, digits, '-' and '_', \
                 starting with a letter"
            ));
        }
        if loaded.iter().any(|other| &other.binding.name == name) {
            return Err(format!("{name}: two entries have this name"));
        }
        if binding.roots.is_empty() && (binding.endpoints.is_empty() || binding.buckets.is_empty())
        {
            return Err(format!(
                "{name}: bind the key to fs location folders (roots) or to object-store \
                 endpoints and buckets"
            ));
        }
        if let Some(root) = binding.roots.iter().find(|root| !root.is_absolute()) {
            return Err(format!("{name}: root {} is not absolute", root.display()));
        }
        // Links resolved once, here, not at every request that names a location.
        binding.roots = binding
            .roots
            .iter()
            .map(|root| crate::storage_policy::resolved(root))
            .collect();
        let key = read_key_file(name, &binding.file)?;
        if let Some(other) = loaded.iter().find(|other| other.key.id() == key.id()) {
            return Err(format!(
                "{name}: the same key as {}; give each key one name",
                other.binding.name
            ));
        }
        loaded.push(BoundKey {
            binding,
            key: Arc::new(key),
        });
    }
    Ok(loaded)
}

fn read_key_file(name: &str, file: &Path) -> Result<ObjectKey, String> {
    let text =
        coffer_process::read_private_file(file).map_err(|reason| format!("{name}: {reason}"))?;
    ObjectKey::from_hex(name, &text)
        .map_err(|reason| format!("{name}: key file {}: {reason}", file.display()))
}

/// The keys this agent reads and writes the location `config` with: sealed with the key its
/// `encryption_key` setting names (refused unless an entry binds that key to the location), and
/// opened with any key bound to it. A location without the setting is in the clear.
pub fn keyring_for(keys: &[BoundKey], config: &StorageConfig) -> Result<Keyring, String> {
    let bound: Vec<&BoundKey> = keys
        .iter()
        .filter(|bound| serves(&bound.binding, config))
        .collect();
    let Some(name) = config.options.get(ENCRYPTION_KEY_OPTION) else {
        return Ok(Keyring::plain());
    };
    let Some(write) = bound.iter().find(|bound| &bound.binding.name == name) else {
        return Err(if keys.iter().any(|bound| &bound.binding.name == name) {
            format!(
                "this agent's key {name:?} is not bound to this location: add its folder, or its \
                 endpoint and bucket, to the key's [[keys]] entry"
            )
        } else {
            format!(
                "this agent has no encryption key named {name:?}: add a [[keys]] entry with that \
                 name, the key file and this location's folder, or endpoint and bucket"
            )
        });
    };
    Ok(Keyring::new(
        Some(write.key.clone()),
        bound.iter().map(|bound| bound.key.clone()).collect(),
    ))
}

/// Whether an entry binds its key to the location `config`.
fn serves(binding: &KeyBinding, config: &StorageConfig) -> bool {
    let option = |key: &str| config.options.get(key).map(String::as_str).unwrap_or("");
    if config.scheme == "fs" {
        let folder = crate::storage_policy::resolved(Path::new(option("root")));
        return binding.roots.iter().any(|root| folder.starts_with(root));
    }
    crate::storage_policy::serves_bucket(&binding.endpoints, &binding.buckets, config)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn key_file(dir: &Path, name: &str, hex: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, hex).expect("write key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn binding(name: &str, file: PathBuf, roots: Vec<PathBuf>) -> KeyBinding {
        KeyBinding {
            name: name.into(),
            file,
            roots,
            endpoints: vec!["http://127.0.0.1:8333".into()],
            buckets: vec!["backups".into()],
        }
    }

    fn location(scheme: &str, options: &[(&str, &str)]) -> StorageConfig {
        StorageConfig {
            location_id: "l".into(),
            name: "loc".into(),
            scheme: scheme.into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            secrets: BTreeMap::new(),
        }
    }

    #[test]
    fn a_location_gets_the_key_it_names_only_where_the_key_is_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backups = dir.path().join("backups");
        std::fs::create_dir_all(&backups).expect("mkdir");
        let old = key_file(dir.path(), "old.key", &"1".repeat(64), 0o600);
        let new = key_file(
            dir.path(),
            "new.key",
            &format!("{}\n", "2".repeat(64)),
            0o400,
        );
        let keys = load(vec![
            binding("old", old, vec![backups.clone()]),
            binding("new", new, vec![backups.clone()]),
        ])
        .expect("load");
        let root = backups.join("site-a");
        let root = root.to_string_lossy();

        let plain = keyring_for(&keys, &location("fs", &[("root", &root)])).expect("plain");
        assert!(!plain.is_sealed());
        let sealed = keyring_for(
            &keys,
            &location("fs", &[("root", &root), (ENCRYPTION_KEY_OPTION, "new")]),
        )
        .expect("sealed");
        assert_eq!(sealed.write_key().map(ObjectKey::name), Some("new"));
        // The old key still opens what it sealed there (a rotation).
        let old_ring = keyring_for(
            &keys,
            &location("fs", &[("root", &root), (ENCRYPTION_KEY_OPTION, "old")]),
        )
        .expect("old");
        let stored = old_ring
            .seal_bytes(b"before the rotation", None)
            .expect("seal");
        assert_eq!(
            sealed.open_bytes(&stored, None).expect("open"),
            b"before the rotation"
        );

        // Elsewhere, or another bucket: refused, naming the rule.
        let elsewhere = dir.path().join("elsewhere").to_string_lossy().into_owned();
        let error = keyring_for(
            &keys,
            &location(
                "fs",
                &[("root", &elsewhere), (ENCRYPTION_KEY_OPTION, "new")],
            ),
        )
        .expect_err("not bound");
        assert!(error.contains("not bound to this location"), "{error}");
        let s3 = |bucket: &str| {
            location(
                "s3",
                &[
                    ("bucket", bucket),
                    ("endpoint", "http://127.0.0.1:8333/"),
                    (ENCRYPTION_KEY_OPTION, "new"),
                ],
            )
        };
        assert!(keyring_for(&keys, &s3("backups")).is_ok());
        let error = keyring_for(&keys, &s3("theirs")).expect_err("other bucket");
        assert!(error.contains("not bound"), "{error}");
        let error = keyring_for(
            &keys,
            &location("fs", &[("root", &root), (ENCRYPTION_KEY_OPTION, "nope")]),
        )
        .expect_err("unknown");
        assert!(
            error.contains("no encryption key named \"nope\""),
            "{error}"
        );
    }

    #[test]
    fn bad_key_entries_stop_the_agent_without_showing_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let roots = vec![dir.path().to_path_buf()];
        let secret = "ab".repeat(32);
        let open_file = key_file(dir.path(), "open.key", &secret, 0o644);
        let error = load(vec![binding("k", open_file, roots.clone())]).expect_err("mode");
        assert!(error.contains("chmod 600"), "{error}");
        assert!(!error.contains(&secret), "{error}");
        let short = key_file(dir.path(), "short.key", "abcd", 0o600);
        let error = load(vec![binding("k", short, roots.clone())]).expect_err("short");
        assert!(error.contains("64 hex digits"), "{error}");
        let error = load(vec![binding(
            "k",
            dir.path().join("missing"),
            roots.clone(),
        )])
        .expect_err("missing");
        assert!(error.contains("missing"), "{error}");
        let good = key_file(dir.path(), "good.key", &secret, 0o600);
        let error = load(vec![binding("Bad Name", good.clone(), roots.clone())]).expect_err("name");
        assert!(error.contains("key name"), "{error}");
        let error = load(vec![
            binding("a", good.clone(), roots.clone()),
            binding("b", good.clone(), roots.clone()),
        ])
        .expect_err("same key twice");
        assert!(error.contains("the same key as a"), "{error}");
        let unbound = KeyBinding {
            name: "k".into(),
            file: good,
            roots: Vec::new(),
            endpoints: Vec::new(),
            buckets: vec!["b".into()],
        };
        let error = load(vec![unbound]).expect_err("binds nothing");
        assert!(error.contains("bind the key"), "{error}");
    }
}
