//! Coffer's storage format, version 1, and the code that reads and writes it.
//!
//! A backup location is self-describing: everything needed to restore a file, or to rebuild the
//! server's catalog, is in the location itself (see `docs/storage-format.md`).
//!
//! - [`layout`]: where everything lives (`coffer.json`, objects, manifests).
//! - [`storage`]: a location's configuration, its secrets and the OpenDAL operator that reaches it.
//! - [`object`]: the object codec (header + raw or zstd body), hashing, streaming upload and
//!   verified download, and the shared [`RateLimiter`].
//! - [`filter`]: path filters (include and exclude globs) and their one compiler.
//! - [`manifest`]: the node manifest (zstd JSON Lines) and the backup manifest (the commit point).
//! - [`description`]: the description of a cluster a location keeps for a catalog rebuild.
//!
//! The agent (which touches storage) and the server (which plans) both use this crate, so the two
//! can never disagree about names or encodings.

pub mod description;
mod direct;
pub mod filter;
pub mod layout;
pub mod manifest;
pub mod object;
pub mod storage;

pub use description::{ClusterDescription, DescribedNode, DescribedSchedule};
pub use filter::{FilterError, PathMatcher};
pub use layout::{
    ClusterLayout, ContentHash, FORMAT_VERSION, FormatMarker, MARKER_PATH, MarkerError,
};
pub use manifest::{
    BackupKind, BackupManifest, BackupNode, ManifestError, NodeManifestEntry, NodeManifestHeader,
    NodeManifestReader, NodeManifestSummary, NodeManifestWriter, PackSlice, PathFilter,
};
pub use object::{
    Codec, Compression, DownloadError, LocationWriteback, RateLimiter, UploadError, UploadOptions,
    UploadOutcome, download_object, hash_file, object_exists, stored_size_range, upload_file,
    verify_object,
};
pub use storage::{SecretSource, StorageConfig, StorageError, open_operator};
