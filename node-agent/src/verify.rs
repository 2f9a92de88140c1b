//! Deep validation's part on the node: objects of a location downloaded and decoded as a
//! restore would, hashed, and written nowhere. What each object holds is an answer (intact,
//! missing, damaged); only a storage that cannot be read at all is an error.

use coffer_format::object::{DownloadError, Keyring, verify_object};
use coffer_format::storage::StorageError;
use coffer_format::{ClusterLayout, ContentHash};
use futures::StreamExt;
use opendal::Operator;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Objects downloaded at once: enough to keep an object store busy with small objects, few
/// enough that large ones do not crowd out a backup running beside the validation.
const VERIFY_CONCURRENCY: usize = 4;

/// What one object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Intact,
    Missing,
    Damaged,
}

/// What verifying one object found.
#[derive(Debug, Clone)]
pub struct Verified {
    pub hash: ContentHash,
    pub condition: Condition,
    /// Why it is damaged; empty otherwise.
    pub message: String,
    pub stored_bytes: u64,
}

/// Verifies `hashes` (objects of `cluster_id`), [`VERIFY_CONCURRENCY`] at a time, sending each
/// outcome as it is known. Stops at the first storage failure (sent as the last item), or
/// when the receiver goes away (the call was canceled).
pub async fn verify_objects(
    operator: Operator,
    keys: Keyring,
    cluster_id: Uuid,
    hashes: Vec<ContentHash>,
    sender: mpsc::Sender<Result<Verified, StorageError>>,
) {
    let layout = ClusterLayout::new(cluster_id);
    let mut outcomes = futures::stream::iter(hashes)
        .map(|hash| {
            let operator = operator.clone();
            let keys = keys.clone();
            let path = layout.object(&hash);
            async move { verify_one(&operator, &keys, &path, hash).await }
        })
        .buffer_unordered(VERIFY_CONCURRENCY);
    while let Some(outcome) = outcomes.next().await {
        let failed = outcome.is_err();
        if sender.send(outcome).await.is_err() || failed {
            return;
        }
    }
}

async fn verify_one(
    operator: &Operator,
    keys: &Keyring,
    path: &str,
    hash: ContentHash,
) -> Result<Verified, StorageError> {
    let verified = |condition, message: String, stored_bytes| Verified {
        hash,
        condition,
        message,
        stored_bytes,
    };
    match verify_object(operator, path, hash, None, keys, None).await {
        Ok(downloaded) => Ok(verified(
            Condition::Intact,
            String::new(),
            downloaded.stored_bytes,
        )),
        Err(DownloadError::Storage(error)) if error.is_not_found() => {
            Ok(verified(Condition::Missing, String::new(), 0))
        }
        Err(DownloadError::Storage(error)) => Err(error),
        Err(
            error @ (DownloadError::Corrupt { .. }
            | DownloadError::Malformed { .. }
            | DownloadError::Sealed { .. }
            | DownloadError::Write { .. }),
        ) => Ok(verified(Condition::Damaged, error.to_string(), 0)),
    }
}
