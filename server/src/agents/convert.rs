//! Conversions between the server's domain and the agent protocol (`coffer.agent.v1`).
//!
//! Only the agents module speaks the agent protocol; the domain hands it locations, plans and
//! filters, and gets back domain records and counters.

use std::collections::BTreeMap;

use coffer_proto::agent::v1 as agent;
use uuid::Uuid;

use super::AgentCode;
use crate::model::backup::BackupFile;
use crate::model::location::{Compression, Location, LocationOptions, SecretRef};
use crate::model::run::{
    BackupKind, NodePhase, NodeUpdate, RestoreSummary, TransferProgress, UploadSummary,
};

/// The compression agents apply to the objects they store here.
pub fn object_compression(location: &Location) -> agent::ObjectCompression {
    match location.compression {
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
pub fn storage_location(location: &Location) -> agent::StorageLocation {
    let mut options = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    let mut set = |key: &str, value: &str| {
        if !value.is_empty() {
            options.insert(key.to_string(), value.to_string());
        }
    };
    let mut secret = |key: &str, value: &Option<SecretRef>| {
        if let Some(reference) = value {
            secrets.insert(key.to_string(), secret_ref(reference));
        }
    };
    if let Some(key) = &location.encryption_key {
        set("encryption_key", key.as_str());
    }
    match &location.options {
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
        location_id: location.id.to_string(),
        name: location.name.to_string(),
        scheme: location.options.kind().to_string(),
        options: options.into_iter().collect(),
        secrets: secrets.into_iter().collect(),
    }
}

fn secret_ref(reference: &SecretRef) -> agent::SecretRef {
    agent::SecretRef {
        source: Some(match reference {
            SecretRef::Env(name) => agent::secret_ref::Source::Env(name.clone()),
            SecretRef::File(path) => agent::secret_ref::Source::File(path.clone()),
        }),
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

/// The domain's name for an agent's status code.
pub fn agent_code(code: tonic::Code) -> AgentCode {
    use tonic::Code;
    match code {
        Code::NotFound => AgentCode::NotFound,
        Code::InvalidArgument | Code::OutOfRange => AgentCode::InvalidArgument,
        Code::AlreadyExists => AgentCode::AlreadyExists,
        Code::FailedPrecondition | Code::Aborted => AgentCode::FailedPrecondition,
        Code::DataLoss => AgentCode::DataLoss,
        Code::ResourceExhausted => AgentCode::ResourceExhausted,
        Code::DeadlineExceeded => AgentCode::DeadlineExceeded,
        Code::Cancelled => AgentCode::Canceled,
        Code::Unavailable => AgentCode::Unavailable,
        Code::Unimplemented => AgentCode::Unimplemented,
        Code::PermissionDenied | Code::Unauthenticated => AgentCode::PermissionDenied,
        Code::Unknown => AgentCode::Unavailable,
        Code::Ok | Code::Internal => AgentCode::Internal,
    }
}

pub(super) fn backup_kind(kind: BackupKind) -> agent::BackupKind {
    match kind {
        BackupKind::Full => agent::BackupKind::Full,
        BackupKind::Incremental => agent::BackupKind::Incremental,
    }
}

pub(super) fn upload_progress(progress: &agent::UploadProgress) -> NodeUpdate {
    let phase = match agent::UploadPhase::try_from(progress.phase) {
        Ok(agent::UploadPhase::Uploading | agent::UploadPhase::WritingManifest) => {
            NodePhase::Uploading
        }
        _ => NodePhase::Hashing,
    };
    NodeUpdate::Progress {
        phase,
        progress: upload_counters(progress),
    }
}

fn upload_counters(progress: &agent::UploadProgress) -> TransferProgress {
    TransferProgress {
        files_total: progress.files_total,
        files_done: progress.files_done,
        files_skipped: progress.files_skipped,
        bytes_total: progress.bytes_total,
        bytes_done: progress.bytes_done,
        bytes_skipped: progress.bytes_skipped,
        bytes_transferred: progress.bytes_uploaded,
    }
}

pub(super) fn upload_summary(summary: agent::UploadSummary) -> UploadSummary {
    UploadSummary {
        manifest_path: summary.manifest_path,
        progress: upload_counters(&summary.progress.unwrap_or_default()),
        objects_uploaded: summary.objects_uploaded,
    }
}

pub(super) fn restore_progress(progress: &agent::RestoreProgress) -> NodeUpdate {
    let phase = match agent::RestorePhase::try_from(progress.phase) {
        Ok(agent::RestorePhase::Placing) => NodePhase::Placing,
        Ok(agent::RestorePhase::RunningHook) => NodePhase::RunningHook,
        Ok(agent::RestorePhase::Planning) => NodePhase::Verifying,
        _ => NodePhase::Downloading,
    };
    NodeUpdate::Progress {
        phase,
        progress: restore_counters(progress),
    }
}

fn restore_counters(progress: &agent::RestoreProgress) -> TransferProgress {
    TransferProgress {
        files_total: progress.files_total,
        files_done: progress.files_done,
        files_skipped: progress.files_skipped,
        bytes_total: progress.bytes_total,
        bytes_done: progress.bytes_done,
        bytes_skipped: progress.bytes_skipped,
        bytes_transferred: progress.bytes_downloaded,
    }
}

pub(super) fn restore_summary(summary: agent::RestoreSummary) -> RestoreSummary {
    RestoreSummary {
        progress: restore_counters(&summary.progress.unwrap_or_default()),
        existing_paths: summary.existing_paths,
        files_overwritten: summary.files_overwritten,
    }
}

pub(super) fn backup_file(node_id: Uuid, entry: agent::ManifestEntry) -> BackupFile {
    BackupFile {
        node_id,
        path: entry.path,
        size_bytes: entry.size,
        mode: entry.mode,
        mtime_ns: entry.mtime_ns,
        blake3_hash: entry.hash,
        pack_hash: (!entry.pack.is_empty()).then_some(entry.pack),
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::model::Name;

    fn location(options: LocationOptions) -> Location {
        Location {
            id: Uuid::nil(),
            name: Name::parse("name", "main").expect("name"),
            options,
            compression: Compression::DEFAULT,
            encryption_key: None,
            create_time: SystemTime::UNIX_EPOCH,
            update_time: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn s3_options_become_opendal_settings_without_secret_values() {
        let storage = storage_location(&location(LocationOptions::S3 {
            bucket: "backups".into(),
            region: String::new(),
            endpoint: "http://127.0.0.1:8333".into(),
            prefix: "/team/db/".into(),
            force_path_style: true,
            access_key_id: Some(SecretRef::Env("AWS_KEY".into())),
            secret_access_key: Some(SecretRef::File("/etc/coffer/secret".into())),
            session_token: None,
        }));
        assert_eq!(storage.scheme, "s3");
        assert_eq!(storage.options["bucket"], "backups");
        assert_eq!(storage.options["region"], "us-east-1");
        assert_eq!(storage.options["root"], "/team/db/");
        assert!(!storage.options.contains_key("enable_virtual_host_style"));
        assert_eq!(storage.secrets.len(), 2);
        assert!(storage.options.values().all(|v| !v.contains("secret")));
    }
}
