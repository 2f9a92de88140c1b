//! The layout of a backup location (format version 1): where everything lives, and the names of
//! the things that live there.
//!
//! ```text
//! <location>/coffer.json                                            format marker and version
//! <location>/clusters/<cluster-id>/objects/<aa>/<blake3-hex>        file bodies, content-addressed
//! <location>/clusters/<cluster-id>/backups/<backup-id>/nodes/<node-id>.manifest
//! <location>/clusters/<cluster-id>/backups/<backup-id>/backup.json  commit point, written last
//! ```
//!
//! Paths here are relative to the location's root and always use `/`. The agent (which writes
//! and reads storage) and the server (which plans) both name objects through this module, so the
//! two can never disagree about where something is.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the layout this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Path of the format marker at the root of a location.
pub const MARKER_PATH: &str = "coffer.json";

/// Content of `coffer.json`: says that a location holds Coffer backups and in which format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatMarker {
    /// Always `"coffer"`.
    pub format: String,
    /// Layout version, [`FORMAT_VERSION`] for this crate.
    pub version: u32,
}

impl Default for FormatMarker {
    fn default() -> Self {
        Self {
            format: "coffer".into(),
            version: FORMAT_VERSION,
        }
    }
}

/// Why a location's marker was refused.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    /// The marker is not JSON of the expected shape.
    #[error("coffer.json is not a Coffer format marker: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The marker names another format.
    #[error("coffer.json names format {0:?}, not \"coffer\"")]
    ForeignFormat(String),
    /// The location was written by a newer Coffer.
    #[error("the location uses format version {found}; this Coffer reads up to {FORMAT_VERSION}")]
    TooNew {
        /// Version found in the marker.
        found: u32,
    },
}

impl FormatMarker {
    /// Parses and checks a marker read from a location.
    ///
    /// Fails when it is not a Coffer marker or its version is newer than this crate's.
    pub fn parse(bytes: &[u8]) -> Result<Self, MarkerError> {
        let marker: Self = serde_json::from_slice(bytes)?;
        if marker.format != "coffer" {
            return Err(MarkerError::ForeignFormat(marker.format));
        }
        if marker.version > FORMAT_VERSION {
            return Err(MarkerError::TooNew {
                found: marker.version,
            });
        }
        Ok(marker)
    }
}

/// Paths of one cluster's data within a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterLayout {
    cluster_id: Uuid,
}

impl ClusterLayout {
    /// The layout of the cluster with this id.
    pub fn new(cluster_id: Uuid) -> Self {
        Self { cluster_id }
    }

    /// Folder of the cluster: `clusters/<cluster-id>/`.
    pub fn root(&self) -> String {
        format!("clusters/{}/", self.cluster_id)
    }

    /// Path of the object holding the content whose BLAKE3 hash is `hash` (lowercase hex, 64
    /// characters): fanned out by its first two characters so no folder grows too large.
    pub fn object(&self, hash: &ContentHash) -> String {
        let hex = hash.to_hex();
        format!("clusters/{}/objects/{}/{hex}", self.cluster_id, &hex[..2])
    }

    /// Whether `path` is in some cluster's object folder (`clusters/<id>/objects/...`).
    pub fn is_object_path(path: &str) -> bool {
        let mut parts = path.split('/');
        parts.next() == Some("clusters") && parts.nth(1) == Some("objects")
    }

    /// Path of the cluster's description (rewritten after each backup it commits).
    pub fn description(&self) -> String {
        format!("clusters/{}/cluster.json", self.cluster_id)
    }

    /// Folder of all backups of the cluster.
    pub fn backups(&self) -> String {
        format!("clusters/{}/backups/", self.cluster_id)
    }

    /// The backup a folder path of a listing of [`Self::backups`] names
    /// (`clusters/<cluster>/backups/<backup-id>/`); `None` for anything else.
    pub fn backup_of_folder(&self, folder: &str) -> Option<Uuid> {
        folder
            .strip_prefix(&self.backups())?
            .strip_suffix('/')
            .and_then(|id| Uuid::parse_str(id).ok())
    }

    /// Path of a node's manifest in a backup.
    pub fn node_manifest(&self, backup_id: Uuid, node_id: Uuid) -> String {
        format!(
            "clusters/{}/backups/{backup_id}/nodes/{node_id}.manifest",
            self.cluster_id
        )
    }

    /// Path of a backup's own manifest: the commit point, written last.
    pub fn backup_manifest(&self, backup_id: Uuid) -> String {
        format!(
            "clusters/{}/backups/{backup_id}/backup.json",
            self.cluster_id
        )
    }
}

/// A BLAKE3 hash of a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// Parses 64 hex characters; `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * index..2 * index + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }

    /// The BLAKE3 hash of `content`, the address of the object that holds it.
    pub fn of(content: &[u8]) -> Self {
        Self(*blake3::hash(content).as_bytes())
    }
}

impl From<blake3::Hash> for ContentHash {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

/// Lowercase hex, as in object paths and manifests.
impl std::fmt::Display for ContentHash {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A table lookup per byte: the hex of every object path and manifest entry is made here.
        formatter.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
    }
}

/// Manifests store hashes as 64 lowercase hex characters.
impl Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_hex(&hex).ok_or_else(|| {
            serde::de::Error::custom(format!("{hex:?} is not a hash (64 hex characters)"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_folders_name_their_backup() {
        let layout = ClusterLayout::new(Uuid::from_u128(1));
        let backup = Uuid::from_u128(2);
        assert_eq!(
            layout.backup_of_folder(&format!("{}{backup}/", layout.backups())),
            Some(backup)
        );
        assert_eq!(
            layout.backup_of_folder(&format!("{}{backup}", layout.backups())),
            None
        );
        assert_eq!(
            layout.backup_of_folder(&format!("{}notes/", layout.backups())),
            None
        );
        let other = ClusterLayout::new(Uuid::from_u128(3));
        assert_eq!(
            layout.backup_of_folder(&format!("{}{backup}/", other.backups())),
            None
        );
    }

    #[test]
    fn paths_follow_the_documented_layout() {
        let cluster = Uuid::from_u128(1);
        let backup = Uuid::from_u128(2);
        let node = Uuid::from_u128(3);
        let layout = ClusterLayout::new(cluster);
        let hash = ContentHash([0xab; 32]);
        assert_eq!(
            layout.object(&hash),
            format!("clusters/{cluster}/objects/ab/{}", "ab".repeat(32))
        );
        assert_eq!(
            layout.node_manifest(backup, node),
            format!("clusters/{cluster}/backups/{backup}/nodes/{node}.manifest")
        );
        assert_eq!(
            layout.backup_manifest(backup),
            format!("clusters/{cluster}/backups/{backup}/backup.json")
        );
        assert!(
            layout
                .backup_manifest(backup)
                .starts_with(&layout.backups())
        );
        assert!(layout.backups().starts_with(&layout.root()));
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let hash = ContentHash(std::array::from_fn(|i| i as u8));
        assert_eq!(ContentHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(ContentHash::from_hex("ab"), None);
        assert_eq!(ContentHash::from_hex(&"zz".repeat(32)), None);
        assert_eq!(hash.to_string(), hash.to_hex());
        let json = serde_json::to_string(&hash).expect("encode");
        assert_eq!(json, format!("\"{}\"", hash.to_hex()));
        assert_eq!(
            serde_json::from_str::<ContentHash>(&json).expect("decode"),
            hash
        );
        assert!(serde_json::from_str::<ContentHash>("\"abc\"").is_err());
        assert_eq!(
            ContentHash::of(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn markers_of_other_formats_or_newer_versions_are_refused() {
        let written = serde_json::to_vec(&FormatMarker::default()).expect("encode");
        assert_eq!(
            FormatMarker::parse(&written).expect("parse"),
            FormatMarker::default()
        );
        assert!(matches!(
            FormatMarker::parse(br#"{"format":"restic","version":1}"#),
            Err(MarkerError::ForeignFormat(_))
        ));
        assert!(matches!(
            FormatMarker::parse(br#"{"format":"coffer","version":99}"#),
            Err(MarkerError::TooNew { found: 99 })
        ));
        assert!(FormatMarker::parse(b"not json").is_err());
    }
}
