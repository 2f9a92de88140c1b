//! What validate and purge runs read of a location: the cluster's objects, listed into the
//! catalog as the agent streams them, and the node manifests of its backups, a page at a time.
//! Neither the listing nor a manifest is ever held whole by the server.

use std::time::{Duration, SystemTime};

use coffer_format::ClusterLayout;
use coffer_format::object::{STALE_TEMPORARY_AGE, TEMPORARY_SUFFIX};

use crate::agents::{AgentClients, storage};
use crate::error::{Error, Result};
use crate::model::backup::{BackupFile, BackupNodeRecord};
use crate::model::location::Location;
use crate::model::{Cluster, run::Run};
use crate::runs::RunHandle;

/// Entries read from a node manifest at once: the agent decodes the manifest from its start for
/// every page, so a reader of whole manifests asks for the largest (50 000, about 10 MB).
const MANIFEST_PAGE: u32 = 50_000;
/// Stale temporary objects remembered by one listing; more wait for the next purge.
const MAX_TEMPORARIES: usize = 10_000;

/// A temporary object (`<hash>.<uuid>.tmp`) left by a writer that stopped between writing
/// and renaming it, unwritten for [`STALE_TEMPORARY_AGE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleTemporary {
    pub path: String,
    pub size: u64,
}

/// What a listing found besides the objects it recorded in the catalog.
#[derive(Debug, Default)]
pub struct Listing {
    /// Objects recorded.
    pub objects: u64,
    /// Stale temporary objects (at most [`MAX_TEMPORARIES`]).
    pub stale_temporaries: Vec<StaleTemporary>,
}

/// Lists the cluster's objects in the location into the catalog (the run's listing), a page
/// at a time, telling `progress` how many so far.
pub async fn list_objects(
    handle: &mut RunHandle,
    cluster: &Cluster,
    location: &Location,
    mut progress: impl FnMut(&mut Run, u64),
) -> Result<Listing> {
    let run_id = handle.run().id;
    let cancel = handle.cancelled();
    let agents = handle.manager().agents().clone();
    let catalog = handle.manager().catalog().clone();
    let prefix = format!("{}objects/", ClusterLayout::new(cluster.id).root());
    let stale_before_ms = stale_before_ms(SystemTime::now(), STALE_TEMPORARY_AGE);
    let mut pages = storage::list_object_pages(&agents, cluster, location, &prefix).await?;
    let mut listing = Listing::default();
    while let Some(page) = pages.next().await? {
        if cancel.is_cancelled() {
            return Err(Error::Canceled);
        }
        let mut objects: Vec<(String, u64)> = Vec::with_capacity(page.len());
        for object in page {
            if let Some(hash) = object_hash(&object.path) {
                objects.push((hash.to_string(), object.size));
            } else if is_temporary(&object.path)
                && object.modify_time_ms > 0
                && object.modify_time_ms < stale_before_ms
                && listing.stale_temporaries.len() < MAX_TEMPORARIES
            {
                listing.stale_temporaries.push(StaleTemporary {
                    path: object.path,
                    size: object.size,
                });
            }
        }
        catalog.add_listed_objects(run_id, &objects).await?;
        listing.objects += objects.len() as u64;
        let listed = listing.objects;
        handle.progress(|run| progress(run, listed)).await;
    }
    Ok(listing)
}

/// Modification times before this are stale at `now` (milliseconds since the epoch).
fn stale_before_ms(now: SystemTime, age: Duration) -> i64 {
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

/// The content hash an object path names (`.../objects/<aa>/<64 hex>`); `None` for anything
/// else (temporary files).
pub fn object_hash(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    is_hash(name).then_some(name)
}

fn is_hash(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Whether an object path is a temporary object written next to its final name
/// (`<hash>.<unique>.tmp`).
fn is_temporary(path: &str) -> bool {
    let Some(name) = path.rsplit('/').next() else {
        return false;
    };
    name.strip_suffix(TEMPORARY_SUFFIX)
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(hash, unique)| is_hash(hash) && !unique.is_empty())
}

/// The entries of one node manifest of a backup, a page at a time.
#[derive(Debug)]
pub struct ManifestPages<'a> {
    agents: &'a AgentClients,
    cluster: &'a Cluster,
    location: &'a Location,
    node: &'a BackupNodeRecord,
    offset: u64,
    done: bool,
}

impl<'a> ManifestPages<'a> {
    pub fn new(
        agents: &'a AgentClients,
        cluster: &'a Cluster,
        location: &'a Location,
        node: &'a BackupNodeRecord,
    ) -> Self {
        Self {
            agents,
            cluster,
            location,
            node,
            offset: 0,
            done: false,
        }
    }

    /// The next page of files; `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<BackupFile>>> {
        if self.done {
            return Ok(None);
        }
        let (files, more) = storage::read_manifest_page(
            self.agents,
            self.cluster,
            self.location,
            &self.node.manifest_path,
            self.node.node_id,
            self.offset,
            MANIFEST_PAGE,
        )
        .await?;
        self.offset += files.len() as u64;
        self.done = !more;
        Ok(Some(files))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_addressed_names_are_objects() {
        let hash = "ab".repeat(32);
        assert_eq!(
            object_hash(&format!("clusters/c/objects/ab/{hash}")),
            Some(hash.as_str())
        );
        assert_eq!(
            object_hash(&format!("clusters/c/objects/ab/{hash}.0123.tmp")),
            None
        );
        assert_eq!(object_hash("clusters/c/objects/ab/short"), None);
        assert_eq!(object_hash(&format!("x/{}", "AB".repeat(32))), None);
    }

    #[test]
    fn temporaries_are_hash_dot_unique_dot_tmp() {
        let hash = "ab".repeat(32);
        assert!(is_temporary(&format!(
            "clusters/c/objects/ab/{hash}.0f3a.tmp"
        )));
        assert!(!is_temporary(&format!("clusters/c/objects/ab/{hash}.tmp")));
        assert!(!is_temporary(&format!("clusters/c/objects/ab/{hash}")));
        assert!(!is_temporary("clusters/c/objects/ab/notes.0f3a.tmp"));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        assert_eq!(
            stale_before_ms(now, Duration::from_secs(86_400)),
            13_600_000
        );
    }
}
