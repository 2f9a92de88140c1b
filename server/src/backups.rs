//! Backups: starting backup runs, and the catalog of committed backups.
//!
//! A backup exists once its own manifest (`backup.json`, the commit point) is in storage and
//! recorded here. The server never opens storage itself: reading a node manifest or removing a
//! commit manifest is asked of an agent of the backup's cluster.

use std::collections::BTreeMap;
use std::time::SystemTime;

use coffer_proto::agent::v1 as agent;
use globset::GlobSet;
use uuid::Uuid;

use crate::catalog::{Catalog, RunInsert};
use crate::clusters::ClusterRegistry;
use crate::error::{Error, Result};
use crate::locations::{Location, LocationRegistry};
use crate::model::run::{
    BackupKind, BackupSpec, Counters, NodePhase, NodeProgress, PathFilter, Run, RunKind, RunSpec,
    RunState, TransferLimits,
};
use crate::model::{Cluster, Labels, Page};
use crate::runs::{RunManager, backup};

/// Most patterns in one include or exclude list.
pub const MAX_PATTERNS: usize = 256;
/// Longest pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
/// Most files uploaded at once by one node.
pub const MAX_CONCURRENCY: u32 = 1024;

/// A committed backup as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    /// Id.
    pub id: Uuid,
    /// Cluster.
    pub cluster_id: Uuid,
    /// Cluster name.
    pub cluster_name: String,
    /// Location.
    pub location_id: Uuid,
    /// Location name.
    pub location_name: String,
    /// Kind.
    pub kind: BackupKind,
    /// Parent (incremental).
    pub parent_backup_id: Option<Uuid>,
    /// File selection it was taken with.
    pub filter: PathFilter,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Run that made it.
    pub run_id: Option<Uuid>,
    /// Schedule that started that run.
    pub schedule_id: Option<Uuid>,
    /// When the run started (the backup's point in time).
    pub start_time: SystemTime,
    /// When it was committed.
    pub commit_time: SystemTime,
    /// Per-node summaries.
    pub nodes: Vec<BackupNodeRecord>,
}

/// One node of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupNodeRecord {
    /// Node id.
    pub node_id: Uuid,
    /// Host name at backup time.
    pub hostname: String,
    /// Datacenter.
    pub datacenter: String,
    /// Rack.
    pub rack: String,
    /// Path of its manifest in the location.
    pub manifest_path: String,
    /// Files.
    pub file_count: u64,
    /// Bytes of the files.
    pub total_bytes: u64,
    /// Bytes this backup wrote to storage for the node.
    pub uploaded_bytes: u64,
    /// Objects this backup wrote.
    pub uploaded_objects: u64,
}

/// A query over backups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListBackups {
    /// Page size.
    pub page_size: u32,
    /// Resume after (start ms, id), newest first.
    pub after: Option<(i64, Uuid)>,
    /// Only this cluster.
    pub cluster_id: Option<Uuid>,
    /// Only this location.
    pub location_id: Option<Uuid>,
    /// Only this kind.
    pub kind: Option<BackupKind>,
    /// Started at or after.
    pub min_start_ms: Option<i64>,
    /// Started at or before.
    pub max_start_ms: Option<i64>,
    /// Carrying all these labels.
    pub labels: BTreeMap<String, String>,
}

/// A request to start a backup, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartBackup {
    /// Cluster name or id.
    pub cluster: String,
    /// Kind.
    pub kind: BackupKind,
    /// Location name or id.
    pub location: String,
    /// File selection (patterns compile).
    pub filter: PathFilter,
    /// Limits.
    pub limits: TransferLimits,
    /// Labels.
    pub labels: Labels,
    /// Plan only.
    pub dry_run: bool,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    /// Node.
    pub node_id: Uuid,
    /// The manifest entry.
    pub entry: agent::ManifestEntry,
}

/// Compiles a list of globs read from `field`, naming the bad one.
pub fn compile_globs(field: &str, patterns: &[String]) -> Result<GlobSet> {
    if patterns.len() > MAX_PATTERNS {
        return Err(Error::invalid(
            field,
            format!("{} patterns, the limit is {MAX_PATTERNS}", patterns.len()),
        ));
    }
    let mut set = globset::GlobSetBuilder::new();
    for (index, pattern) in patterns.iter().enumerate() {
        let field = format!("{field}[{index}]");
        if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
            return Err(Error::invalid(
                field,
                format!("patterns are 1 to {MAX_PATTERN_LEN} bytes long"),
            ));
        }
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|error| {
                Error::invalid(
                    &field,
                    format!("{pattern:?} is not a valid glob: {}", error.kind()),
                )
            })?;
        set.add(glob);
    }
    set.build()
        .map_err(|error| Error::invalid(field, format!("patterns do not compile: {error}")))
}

/// Starts backups and answers questions about committed ones.
#[derive(Debug, Clone)]
pub struct BackupService {
    catalog: Catalog,
    clusters: ClusterRegistry,
    locations: LocationRegistry,
    runs: RunManager,
}

impl BackupService {
    /// A service over the catalog, registries and run manager.
    pub fn new(
        catalog: Catalog,
        clusters: ClusterRegistry,
        locations: LocationRegistry,
        runs: RunManager,
    ) -> Self {
        Self {
            catalog,
            clusters,
            locations,
            runs,
        }
    }

    /// Records a backup run and starts it in the background; returns its id at once.
    ///
    /// A retried request with the same idempotency key returns the first run. Fails with
    /// NOT_FOUND for an unknown cluster or location, FAILED_PRECONDITION when another run of the
    /// cluster is active, ALREADY_EXISTS when the key belongs to a run with other parameters.
    #[tracing::instrument(skip_all, fields(cluster = %request.cluster))]
    pub async fn start(&self, request: StartBackup) -> Result<Uuid> {
        let cluster = self.clusters.get(&request.cluster).await?;
        let location = self.locations.get(&request.location).await?;
        let parent = match request.kind {
            BackupKind::Incremental => self.catalog.latest_backup(cluster.id, location.id).await?,
            BackupKind::Full => None,
        };
        // An incremental backup without a parent has nothing to trust: it is a full one.
        let kind = if parent.is_some() {
            BackupKind::Incremental
        } else {
            BackupKind::Full
        };
        let spec = BackupSpec {
            kind: request.kind,
            location_id: location.id,
            location_name: location.name.to_string(),
            filter: request.filter,
            limits: request.limits,
            labels: request.labels.as_map().clone(),
        };
        let now = SystemTime::now();
        let run = Run {
            id: Uuid::now_v7(),
            cluster_id: cluster.id,
            cluster_name: cluster.name.to_string(),
            kind: RunKind::Backup,
            state: RunState::Queued,
            spec: RunSpec::Backup(spec.clone()),
            dry_run: request.dry_run,
            idempotency_key: request.idempotency_key,
            schedule_id: None,
            backup_id: (!request.dry_run).then(Uuid::now_v7),
            error: String::new(),
            create_time: now,
            start_time: None,
            finish_time: None,
            update_time: now,
            nodes: cluster
                .nodes
                .iter()
                .map(|node| NodeProgress {
                    node_id: node.info.node_id,
                    source_node_id: None,
                    phase: NodePhase::Queued,
                    counters: Counters::default(),
                    last_error: String::new(),
                })
                .collect(),
        };
        match self.catalog.insert_run(&run).await? {
            RunInsert::Existing(id) => {
                tracing::info!(run_id = %id, "idempotency key matched an earlier run");
                return Ok(id);
            }
            RunInsert::Inserted => {}
        }
        let id = run.id;
        tracing::info!(run_id = %id, kind = kind.as_str(), dry_run = run.dry_run, "backup run queued");
        let plan = backup::BackupPlan {
            cluster,
            location,
            spec,
            kind,
            parent_backup_id: parent.map(|parent| parent.id),
        };
        self.runs
            .spawn(run, move |handle| backup::execute(handle, plan));
        Ok(id)
    }

    /// The backup with this id.
    pub async fn get(&self, id: Uuid) -> Result<BackupRecord> {
        self.catalog
            .get_backup(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "backup",
                name: id.to_string(),
            })
    }

    /// Backups newest first.
    pub async fn list(&self, query: ListBackups) -> Result<Page<BackupRecord>> {
        let (items, more) = self.catalog.list_backups(&query).await?;
        let next_page_token = if more {
            items
                .last()
                .map(|last| encode_time_token("b1", last.start_time, last.id))
        } else {
            None
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Resolves a cluster and location reference for a listing (NOT_FOUND if unknown).
    pub async fn resolve_filters(
        &self,
        cluster: &str,
        location: &str,
    ) -> Result<(Option<Cluster>, Option<Location>)> {
        let cluster = if cluster.is_empty() {
            None
        } else {
            Some(self.clusters.get(cluster).await?)
        };
        let location = if location.is_empty() {
            None
        } else {
            Some(self.locations.get(location).await?)
        };
        Ok((cluster, location))
    }

    /// A page of a backup's files, read from its node manifests through an agent.
    pub async fn files(
        &self,
        id: Uuid,
        node: Option<Uuid>,
        include: &GlobSet,
        exclude: &GlobSet,
        page_size: u32,
        token: Option<(usize, u64)>,
    ) -> Result<Page<BackupFile>> {
        let backup = self.get(id).await?;
        let location = self.locations.get(&backup.location_id.to_string()).await?;
        let cluster = self.clusters.get(&backup.cluster_id.to_string()).await?;
        let nodes: Vec<&BackupNodeRecord> = backup
            .nodes
            .iter()
            .filter(|n| node.is_none_or(|id| n.node_id == id))
            .collect();
        if let Some(id) = node
            && nodes.is_empty()
        {
            return Err(Error::NotFound {
                kind: "node",
                name: format!("{id} in backup {}", backup.id),
            });
        }
        let (mut node_index, mut offset) = token.unwrap_or((0, 0));
        let mut files = Vec::new();
        while node_index < nodes.len() && files.len() < page_size as usize {
            let record = nodes[node_index];
            let (entries, more) = backup::read_manifest_page(
                self.runs.agents(),
                &cluster,
                &location,
                &record.manifest_path,
                offset,
                1000,
            )
            .await?;
            let mut consumed = 0u64;
            for entry in entries.iter() {
                if files.len() >= page_size as usize {
                    break;
                }
                consumed += 1;
                let selected = (include.is_empty() || include.is_match(&entry.path))
                    && !exclude.is_match(&entry.path);
                if selected {
                    files.push(BackupFile {
                        node_id: record.node_id,
                        entry: entry.clone(),
                    });
                }
            }
            offset += consumed;
            if consumed == entries.len() as u64 && !more {
                node_index += 1;
                offset = 0;
            }
        }
        let next_page_token =
            (node_index < nodes.len()).then(|| format!("f1.{node_index}.{offset}"));
        Ok(Page {
            items: files,
            next_page_token,
        })
    }

    /// Makes a backup unrestorable: removes its commit manifest from storage (so a catalog
    /// rebuilt from storage does not bring it back), then its record. Objects stay for a purge.
    pub async fn delete(&self, id: Uuid) -> Result<()> {
        let backup = self.get(id).await?;
        let location = self.locations.get(&backup.location_id.to_string()).await?;
        let cluster = self.clusters.get(&backup.cluster_id.to_string()).await?;
        if let Some(run) = self.catalog.active_run(cluster.id).await?
            && run.id.to_string() == backup.run_id.map(|id| id.to_string()).unwrap_or_default()
        {
            return Err(Error::FailedPrecondition(format!(
                "backup {id} is used by active run {}",
                run.id
            )));
        }
        let path = coffer_format::ClusterLayout::new(cluster.id).backup_manifest(backup.id);
        backup::delete_object(self.runs.agents(), &cluster, &location, &path).await?;
        self.catalog.delete_backup(id).await?;
        tracing::info!(backup_id = %id, "deleted backup");
        Ok(())
    }
}

/// Page token of newest-first listings: prefix, time in ms and id.
pub fn encode_time_token(prefix: &str, time: SystemTime, id: Uuid) -> String {
    let ms = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{prefix}.{ms}.{id}")
}

/// Parses a token made by [`encode_time_token`] read from `field`.
pub fn parse_time_token(field: &str, prefix: &str, token: &str) -> Result<Option<(i64, Uuid)>> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || {
        Error::invalid(
            field,
            "malformed page token; pass next_page_token back unchanged",
        )
    };
    let mut parts = token.splitn(3, '.');
    if parts.next() != Some(prefix) {
        return Err(malformed());
    }
    let ms = parts
        .next()
        .and_then(|ms| ms.parse::<i64>().ok())
        .ok_or_else(malformed)?;
    let id = parts
        .next()
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(malformed)?;
    Ok(Some((ms, id)))
}

/// Parses a ListBackupFiles token read from `field`.
pub fn parse_files_token(field: &str, token: &str) -> Result<Option<(usize, u64)>> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || {
        Error::invalid(
            field,
            "malformed page token; pass next_page_token back unchanged",
        )
    };
    let mut parts = token.splitn(3, '.');
    if parts.next() != Some("f1") {
        return Err(malformed());
    }
    let node = parts
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(malformed)?;
    let offset = parts
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(malformed)?;
    Ok(Some((node, offset)))
}
