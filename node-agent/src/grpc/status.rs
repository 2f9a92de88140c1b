//! The agent's one mapping of its errors to gRPC statuses. The server keeps the code (and
//! names the node) when it shows the message to operators, so the code says what kind of
//! failure it was: NOT_FOUND for a missing object, UNAVAILABLE for one worth retrying,
//! DATA_LOSS for stored content that is corrupt, CANCELLED for a canceled call.

use std::io;

use coffer_format::object::{DownloadError, SealError};
use coffer_format::{ManifestError, StorageError};
use tonic::{Code, Status};

use crate::restore::{HookFailure, RestoreFailure};
use crate::snapshot::SnapshotError;
use crate::upload::UploadFailure;

pub(super) fn snapshot_status(error: SnapshotError) -> Status {
    match error {
        SnapshotError::InvalidTag { .. } => Status::invalid_argument(error.to_string()),
        SnapshotError::AlreadyExists { .. } => Status::already_exists(error.to_string()),
        other => Status::failed_precondition(other.to_string()),
    }
}

pub(super) fn storage_code(error: &StorageError) -> Code {
    if error.is_not_found() {
        Code::NotFound
    } else if error.is_retryable() {
        Code::Unavailable
    } else {
        Code::FailedPrecondition
    }
}

pub(super) fn storage_status(error: StorageError) -> Status {
    Status::new(storage_code(&error), error.to_string())
}

/// Sealed data that cannot be opened: FAILED_PRECONDITION when this agent lacks the key (the
/// operator can bind it), DATA_LOSS when the data itself is not what Coffer sealed.
pub(super) fn seal_code(error: &SealError) -> Code {
    match error {
        SealError::MissingKey(_) => Code::FailedPrecondition,
        SealError::NotSealed | SealError::Damaged(_) => Code::DataLoss,
    }
}

/// Stored bytes at `path` of the location `location` that do not open.
pub(super) fn sealed_status(location: &str, path: &str, error: &SealError) -> Status {
    Status::new(
        seal_code(error),
        format!("location {location}: {path}: {error}"),
    )
}

/// A manifest that cannot be read: the storage's code, DATA_LOSS when its content is corrupt.
fn manifest_code(error: &ManifestError) -> Code {
    match error {
        ManifestError::Storage(error) => storage_code(error),
        ManifestError::Malformed { .. } | ManifestError::Invalid(_) => Code::DataLoss,
        ManifestError::Sealed { source, .. } => seal_code(source),
        _ => Code::FailedPrecondition,
    }
}

pub(super) fn manifest_status(error: ManifestError) -> Status {
    Status::new(manifest_code(&error), error.to_string())
}

/// A node's disk that failed: RESOURCE_EXHAUSTED when it is full.
fn local_code(error: &io::Error) -> Code {
    if error.kind() == io::ErrorKind::StorageFull {
        Code::ResourceExhausted
    } else {
        Code::FailedPrecondition
    }
}

/// Upload failures; the message names the file or the location concerned.
pub(super) fn upload_status(failure: UploadFailure) -> Status {
    match failure {
        UploadFailure::Canceled => Status::cancelled("upload canceled"),
        UploadFailure::Storage(error) => storage_status(error),
        other => Status::failed_precondition(other.to_string()),
    }
}

/// Restore failures. Messages name the file, manifest path or
/// folder concerned.
pub(super) fn restore_status(failure: RestoreFailure) -> Status {
    let code = match &failure {
        RestoreFailure::Refused(_) | RestoreFailure::NoSpace { .. } => Code::FailedPrecondition,
        RestoreFailure::Manifest(error) => manifest_code(error),
        RestoreFailure::Download { source, .. } => match source.as_ref() {
            DownloadError::Storage(error) => storage_code(error),
            DownloadError::Corrupt { .. } | DownloadError::Malformed { .. } => Code::DataLoss,
            DownloadError::Sealed { source, .. } => seal_code(source),
            DownloadError::Write { source, .. } => local_code(source),
        },
        RestoreFailure::SizeMismatch { .. } => Code::DataLoss,
        RestoreFailure::Local { source, .. } => local_code(source),
        RestoreFailure::Hook(HookFailure::TimedOut { .. }) => Code::DeadlineExceeded,
        RestoreFailure::Hook(_) => Code::FailedPrecondition,
        RestoreFailure::Canceled => Code::Cancelled,
    };
    Status::new(code, failure.to_string())
}
