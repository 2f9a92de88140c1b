//! Conversions for locations, backups and runs.

use std::time::{Duration, SystemTime};

use coffer_proto::v1 as proto;
use uuid::Uuid;

use crate::backups::{self, BackupFile, BackupRecord, StartBackup};
use crate::error::{Error, Result};
use crate::locations::{Compression, Location, LocationOptions, NewLocation, SecretRef};
use crate::model::run::{
    BackupKind, Counters, NodePhase, NodeProgress, PathFilter, Run, RunKind, RunSpec, RunState,
    TransferLimits,
};
use crate::model::{Labels, Name};

fn timestamp(time: SystemTime) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(time))
}

fn duration(duration: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(duration).ok()
}

/// Parses an id read from `field`.
pub fn parse_id(field: &str, kind: &str, text: &str) -> Result<Uuid> {
    if text.is_empty() {
        return Err(Error::invalid(field, format!("is required (a {kind} id)")));
    }
    Uuid::parse_str(text).map_err(|_| Error::invalid(field, format!("{text:?} is not a {kind} id")))
}

/// Milliseconds of a protobuf timestamp read from `field`.
pub fn timestamp_ms(field: &str, time: Option<prost_types::Timestamp>) -> Result<Option<i64>> {
    match time {
        None => Ok(None),
        Some(time) => {
            let ms = time
                .seconds
                .checked_mul(1000)
                .and_then(|ms| ms.checked_add(i64::from(time.nanos) / 1_000_000))
                .filter(|_| (0..1_000_000_000).contains(&time.nanos))
                .ok_or_else(|| Error::invalid(field, "is not a valid timestamp"))?;
            Ok(Some(ms))
        }
    }
}

fn secret(field: &str, secret: Option<proto::SecretRef>) -> Result<Option<SecretRef>> {
    let Some(secret) = secret else {
        return Ok(None);
    };
    let reference = match secret.source {
        Some(proto::secret_ref::Source::Env(name)) => SecretRef::Env(name),
        Some(proto::secret_ref::Source::File(path)) => SecretRef::File(path),
        None => return Err(Error::invalid(field, "set env or file")),
    };
    SecretRef::parse(field, reference).map(Some)
}

fn secret_out(secret: &Option<SecretRef>) -> Option<proto::SecretRef> {
    secret.as_ref().map(|secret| proto::SecretRef {
        source: Some(match secret {
            SecretRef::Env(name) => proto::secret_ref::Source::Env(name.clone()),
            SecretRef::File(path) => proto::secret_ref::Source::File(path.clone()),
        }),
    })
}

/// Validates the kind-specific options of a create or update request.
fn location_options(
    options: Option<proto::create_location_request::Options>,
) -> Result<LocationOptions> {
    use proto::create_location_request::Options;
    let options = match options {
        None => {
            return Err(Error::invalid(
                "options",
                "give the options of one kind: fs, s3, azblob or gcs",
            ));
        }
        Some(Options::Fs(fs)) => LocationOptions::Fs { path: fs.path },
        Some(Options::S3(s3)) => LocationOptions::S3 {
            bucket: s3.bucket,
            region: s3.region,
            endpoint: s3.endpoint,
            prefix: s3.prefix,
            force_path_style: s3.force_path_style,
            access_key_id: secret("s3.access_key_id", s3.access_key_id)?,
            secret_access_key: secret("s3.secret_access_key", s3.secret_access_key)?,
            session_token: secret("s3.session_token", s3.session_token)?,
        },
        Some(Options::Azblob(az)) => LocationOptions::Azblob {
            container: az.container,
            endpoint: az.endpoint,
            account_name: az.account_name,
            prefix: az.prefix,
            account_key: secret("azblob.account_key", az.account_key)?,
            sas_token: secret("azblob.sas_token", az.sas_token)?,
        },
        Some(Options::Gcs(gcs)) => LocationOptions::Gcs {
            bucket: gcs.bucket,
            endpoint: gcs.endpoint,
            prefix: gcs.prefix,
            credential: secret("gcs.credential", gcs.credential)?,
            anonymous: gcs.anonymous,
        },
    };
    options.validate(options.kind())?;
    Ok(options)
}

/// Validates a requested compression.
fn compression(requested: proto::Compression) -> Result<Compression> {
    match proto::CompressionCodec::try_from(requested.codec) {
        Ok(proto::CompressionCodec::Unspecified | proto::CompressionCodec::Zstd) => {
            match requested.level {
                0 => Ok(Compression::DEFAULT),
                level => Compression::zstd(level)
                    .map_err(|error| Error::invalid("compression.level", error)),
            }
        }
        Ok(proto::CompressionCodec::None) if requested.level == 0 => Ok(Compression::None),
        Ok(proto::CompressionCodec::None) => Err(Error::invalid(
            "compression.level",
            format!(
                "is {} but the codec is NONE: give a level only with ZSTD",
                requested.level
            ),
        )),
        Err(_) => Err(Error::invalid(
            "compression.codec",
            format!("{} is not a compression codec", requested.codec),
        )),
    }
}

fn compression_out(compression: Compression) -> proto::Compression {
    match compression {
        Compression::None => proto::Compression {
            codec: proto::CompressionCodec::None.into(),
            level: 0,
        },
        Compression::Zstd { level } => proto::Compression {
            codec: proto::CompressionCodec::Zstd.into(),
            level,
        },
    }
}

impl TryFrom<proto::CreateLocationRequest> for NewLocation {
    type Error = Error;

    fn try_from(request: proto::CreateLocationRequest) -> Result<Self> {
        let name = Name::parse("name", &request.name)?;
        let options = location_options(request.options)?;
        // Unset means the default, zstd level 1.
        let compression = request
            .compression
            .map(compression)
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            name,
            options,
            compression,
        })
    }
}

impl TryFrom<proto::UpdateLocationRequest> for crate::locations::LocationUpdate {
    type Error = Error;

    fn try_from(request: proto::UpdateLocationRequest) -> Result<Self> {
        use proto::create_location_request::Options as Create;
        use proto::update_location_request::Options as Update;
        if request.location.is_empty() {
            return Err(Error::invalid(
                "location",
                "is required (a location name or id)",
            ));
        }
        let name = request
            .name
            .as_deref()
            .map(|name| Name::parse("name", name))
            .transpose()?;
        let options = request
            .options
            .map(|options| {
                location_options(Some(match options {
                    Update::Fs(fs) => Create::Fs(fs),
                    Update::S3(s3) => Create::S3(s3),
                    Update::Azblob(azblob) => Create::Azblob(azblob),
                    Update::Gcs(gcs) => Create::Gcs(gcs),
                }))
            })
            .transpose()?;
        let compression = request.compression.map(compression).transpose()?;
        if name.is_none() && options.is_none() && compression.is_none() {
            return Err(Error::invalid(
                "name",
                "nothing to change: give a new name, new options or a new compression",
            ));
        }
        Ok(Self {
            location: request.location,
            name,
            options,
            compression,
        })
    }
}

fn check_step(step: crate::locations::CheckStep) -> Option<proto::LocationCheckStep> {
    use crate::locations::CheckStep;
    Some(match step {
        CheckStep::Ok(latency) => proto::LocationCheckStep {
            status: proto::LocationCheckStatus::Ok.into(),
            error_message: String::new(),
            latency: duration(latency),
        },
        CheckStep::Failed(message) => proto::LocationCheckStep {
            status: proto::LocationCheckStatus::Failed.into(),
            error_message: message,
            latency: None,
        },
        CheckStep::Skipped => proto::LocationCheckStep {
            status: proto::LocationCheckStatus::Skipped.into(),
            error_message: String::new(),
            latency: None,
        },
    })
}

impl From<crate::locations::NodeLocationCheck> for proto::LocationNodeCheck {
    fn from(check: crate::locations::NodeLocationCheck) -> Self {
        Self {
            node_id: check.node_id.to_string(),
            address: check.address.to_string(),
            error_message: check.error,
            write: check_step(check.write),
            read: check_step(check.read),
            list: check_step(check.list),
            delete: check_step(check.delete),
        }
    }
}

impl From<Location> for proto::Location {
    fn from(location: Location) -> Self {
        use proto::location::Options;
        let (kind, options) = match &location.options {
            LocationOptions::Fs { path } => (
                proto::LocationKind::Fs,
                Options::Fs(proto::FsLocationOptions { path: path.clone() }),
            ),
            LocationOptions::S3 {
                bucket,
                region,
                endpoint,
                prefix,
                force_path_style,
                access_key_id,
                secret_access_key,
                session_token,
            } => (
                proto::LocationKind::S3,
                Options::S3(proto::S3LocationOptions {
                    bucket: bucket.clone(),
                    region: region.clone(),
                    endpoint: endpoint.clone(),
                    prefix: prefix.clone(),
                    force_path_style: *force_path_style,
                    access_key_id: secret_out(access_key_id),
                    secret_access_key: secret_out(secret_access_key),
                    session_token: secret_out(session_token),
                }),
            ),
            LocationOptions::Azblob {
                container,
                endpoint,
                account_name,
                prefix,
                account_key,
                sas_token,
            } => (
                proto::LocationKind::Azblob,
                Options::Azblob(proto::AzblobLocationOptions {
                    container: container.clone(),
                    endpoint: endpoint.clone(),
                    account_name: account_name.clone(),
                    prefix: prefix.clone(),
                    account_key: secret_out(account_key),
                    sas_token: secret_out(sas_token),
                }),
            ),
            LocationOptions::Gcs {
                bucket,
                endpoint,
                prefix,
                credential,
                anonymous,
            } => (
                proto::LocationKind::Gcs,
                Options::Gcs(proto::GcsLocationOptions {
                    bucket: bucket.clone(),
                    endpoint: endpoint.clone(),
                    prefix: prefix.clone(),
                    credential: secret_out(credential),
                    anonymous: *anonymous,
                }),
            ),
        };
        Self {
            id: location.id.to_string(),
            name: location.name.to_string(),
            kind: kind.into(),
            options: Some(options),
            create_time: timestamp(location.create_time),
            update_time: timestamp(location.update_time),
            compression: Some(compression_out(location.compression)),
        }
    }
}

/// The kind filter of ListLocations.
pub fn location_kind(kind: i32) -> Result<Option<&'static str>> {
    match proto::LocationKind::try_from(kind) {
        Ok(proto::LocationKind::Unspecified) => Ok(None),
        Ok(proto::LocationKind::Fs) => Ok(Some("fs")),
        Ok(proto::LocationKind::S3) => Ok(Some("s3")),
        Ok(proto::LocationKind::Azblob) => Ok(Some("azblob")),
        Ok(proto::LocationKind::Gcs) => Ok(Some("gcs")),
        Err(_) => Err(Error::invalid(
            "kind",
            format!("{kind} is not a location kind"),
        )),
    }
}

fn backup_kind(field: &str, kind: i32) -> Result<Option<BackupKind>> {
    match proto::BackupKind::try_from(kind) {
        Ok(proto::BackupKind::Unspecified) => Ok(None),
        Ok(proto::BackupKind::Full) => Ok(Some(BackupKind::Full)),
        Ok(proto::BackupKind::Incremental) => Ok(Some(BackupKind::Incremental)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{kind} is not a backup kind"),
        )),
    }
}

fn backup_kind_out(kind: BackupKind) -> i32 {
    match kind {
        BackupKind::Full => proto::BackupKind::Full,
        BackupKind::Incremental => proto::BackupKind::Incremental,
    }
    .into()
}

/// Validates an idempotency key (empty means none).
fn idempotency_key(key: String) -> Result<Option<String>> {
    if key.len() > backups::MAX_IDEMPOTENCY_KEY_LEN || key.chars().any(char::is_control) {
        return Err(Error::invalid(
            "idempotency_key",
            format!(
                "at most {} printable bytes",
                backups::MAX_IDEMPOTENCY_KEY_LEN
            ),
        ));
    }
    Ok((!key.is_empty()).then_some(key))
}

/// Validates a path filter read from `field` (the globs compile).
pub fn path_filter(field: &str, filter: Option<proto::PathFilter>) -> Result<PathFilter> {
    let filter = filter.unwrap_or_default();
    backups::compile_globs(&format!("{field}.include"), &filter.include)?;
    backups::compile_globs(&format!("{field}.exclude"), &filter.exclude)?;
    Ok(PathFilter {
        include: filter.include,
        exclude: filter.exclude,
    })
}

fn limits(field: &str, limits: Option<proto::TransferLimits>) -> Result<TransferLimits> {
    let limits = limits.unwrap_or_default();
    let rate = u64::try_from(limits.rate_limit_bytes_per_second).map_err(|_| {
        Error::invalid(
            format!("{field}.rate_limit_bytes_per_second"),
            format!("{} is negative", limits.rate_limit_bytes_per_second),
        )
    })?;
    let concurrency = u32::try_from(limits.concurrency)
        .ok()
        .filter(|c| *c <= backups::MAX_CONCURRENCY)
        .ok_or_else(|| {
            Error::invalid(
                format!("{field}.concurrency"),
                format!(
                    "{} is outside 0..={}",
                    limits.concurrency,
                    backups::MAX_CONCURRENCY
                ),
            )
        })?;
    let node_parallelism = u32::try_from(limits.node_parallelism).map_err(|_| {
        Error::invalid(
            format!("{field}.node_parallelism"),
            format!("{} is negative", limits.node_parallelism),
        )
    })?;
    Ok(TransferLimits {
        rate_limit_bytes_per_second: rate,
        concurrency,
        node_parallelism,
    })
}

impl TryFrom<proto::StartBackupRequest> for StartBackup {
    type Error = Error;

    fn try_from(request: proto::StartBackupRequest) -> Result<Self> {
        if request.cluster.is_empty() {
            return Err(Error::invalid(
                "cluster",
                "is required (a cluster name or id)",
            ));
        }
        let spec = request
            .backup
            .ok_or_else(|| Error::invalid("backup", "is required (the backup's parameters)"))?;
        if spec.location.is_empty() {
            return Err(Error::invalid(
                "backup.location",
                "is required (a location name or id)",
            ));
        }
        let kind = backup_kind("backup.kind", spec.kind)?.unwrap_or(BackupKind::Full);
        let idempotency_key = idempotency_key(request.idempotency_key)?;
        Ok(Self {
            cluster: request.cluster,
            kind,
            location: spec.location,
            filter: path_filter("backup.filter", spec.filter)?,
            limits: limits("backup.limits", spec.limits)?,
            labels: Labels::parse("backup.labels", spec.labels)?,
            dry_run: request.dry_run,
            idempotency_key,
        })
    }
}

/// Parses the kind filter of ListBackups.
pub fn list_backup_kind(kind: i32) -> Result<Option<BackupKind>> {
    backup_kind("kind", kind)
}

impl From<BackupRecord> for proto::Backup {
    fn from(backup: BackupRecord) -> Self {
        let mut totals = proto::BackupStats::default();
        let nodes = backup
            .nodes
            .iter()
            .map(|node| {
                totals.file_count += node.file_count;
                totals.total_bytes += node.total_bytes;
                totals.uploaded_bytes += node.uploaded_bytes;
                totals.uploaded_objects += node.uploaded_objects;
                proto::BackupNode {
                    node_id: node.node_id.to_string(),
                    hostname: node.hostname.clone(),
                    datacenter: node.datacenter.clone(),
                    rack: node.rack.clone(),
                    stats: Some(proto::BackupStats {
                        file_count: node.file_count,
                        total_bytes: node.total_bytes,
                        uploaded_bytes: node.uploaded_bytes,
                        uploaded_objects: node.uploaded_objects,
                    }),
                }
            })
            .collect();
        Self {
            id: backup.id.to_string(),
            cluster_id: backup.cluster_id.to_string(),
            cluster_name: backup.cluster_name,
            location_id: backup.location_id.to_string(),
            location_name: backup.location_name,
            kind: backup_kind_out(backup.kind),
            parent_backup_id: backup
                .parent_backup_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            filter: Some(proto::PathFilter {
                include: backup.filter.include,
                exclude: backup.filter.exclude,
            }),
            labels: backup.labels.into_iter().collect(),
            run_id: backup.run_id.map(|id| id.to_string()).unwrap_or_default(),
            schedule_id: backup
                .schedule_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            start_time: timestamp(backup.start_time),
            commit_time: timestamp(backup.commit_time),
            nodes,
            totals: Some(totals),
        }
    }
}

impl From<BackupFile> for proto::BackupFile {
    fn from(file: BackupFile) -> Self {
        let nanos = file.entry.mtime_ns;
        Self {
            node_id: file.node_id.to_string(),
            path: file.entry.path,
            size_bytes: file.entry.size,
            mode: file.entry.mode,
            modify_time: Some(prost_types::Timestamp {
                seconds: nanos.div_euclid(1_000_000_000),
                nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
            }),
            blake3_hash: file.entry.hash,
        }
    }
}

fn run_state_out(state: RunState) -> proto::RunState {
    match state {
        RunState::Queued => proto::RunState::Queued,
        RunState::Running => proto::RunState::Running,
        RunState::Canceling => proto::RunState::Canceling,
        RunState::Succeeded => proto::RunState::Succeeded,
        RunState::Failed => proto::RunState::Failed,
        RunState::Canceled => proto::RunState::Canceled,
    }
}

/// Parses the state filter of ListRuns.
pub fn run_states(states: &[i32]) -> Result<Vec<RunState>> {
    states
        .iter()
        .enumerate()
        .map(|(index, state)| match proto::RunState::try_from(*state) {
            Ok(proto::RunState::Queued) => Ok(RunState::Queued),
            Ok(proto::RunState::Running) => Ok(RunState::Running),
            Ok(proto::RunState::Canceling) => Ok(RunState::Canceling),
            Ok(proto::RunState::Succeeded) => Ok(RunState::Succeeded),
            Ok(proto::RunState::Failed) => Ok(RunState::Failed),
            Ok(proto::RunState::Canceled) => Ok(RunState::Canceled),
            _ => Err(Error::invalid(
                format!("states[{index}]"),
                format!("{state} is not a run state"),
            )),
        })
        .collect()
}

/// Parses the kind filter of ListRuns.
pub fn run_kind(kind: i32) -> Result<Option<RunKind>> {
    match proto::RunKind::try_from(kind) {
        Ok(proto::RunKind::Unspecified) => Ok(None),
        Ok(proto::RunKind::Backup) => Ok(Some(RunKind::Backup)),
        Ok(proto::RunKind::Restore) => Ok(Some(RunKind::Restore)),
        Err(_) => Err(Error::invalid("kind", format!("{kind} is not a run kind"))),
    }
}

fn phase_out(phase: NodePhase) -> proto::NodePhase {
    match phase {
        NodePhase::Queued => proto::NodePhase::Queued,
        NodePhase::Snapshotting => proto::NodePhase::Snapshotting,
        NodePhase::Hashing => proto::NodePhase::Hashing,
        NodePhase::Uploading => proto::NodePhase::Uploading,
        NodePhase::Downloading => proto::NodePhase::Downloading,
        NodePhase::Verifying => proto::NodePhase::Verifying,
        NodePhase::Placing => proto::NodePhase::Placing,
        NodePhase::RunningHook => proto::NodePhase::RunningHook,
        NodePhase::CleaningUp => proto::NodePhase::CleaningUp,
        NodePhase::Done => proto::NodePhase::Done,
        NodePhase::Failed => proto::NodePhase::Failed,
        NodePhase::Canceled => proto::NodePhase::Canceled,
    }
}

fn counters_out(counters: &Counters) -> proto::ProgressCounters {
    proto::ProgressCounters {
        files_total: counters.files_total,
        files_done: counters.files_done,
        files_skipped: counters.files_skipped,
        bytes_total: counters.bytes_total,
        bytes_done: counters.bytes_done,
        bytes_skipped: counters.bytes_skipped,
        rate_bytes_per_second: counters.rate_bytes_per_second,
        eta: counters.eta.and_then(duration),
        bytes_transferred: counters.bytes_transferred,
    }
}

impl From<NodeProgress> for proto::NodeProgress {
    fn from(node: NodeProgress) -> Self {
        Self {
            node_id: node.node_id.to_string(),
            source_node_id: node
                .source_node_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            phase: phase_out(node.phase).into(),
            progress: Some(counters_out(&node.counters)),
            last_error: node.last_error,
        }
    }
}

impl From<Run> for proto::Run {
    fn from(run: Run) -> Self {
        let totals = counters_out(&run.totals());
        let spec = match run.spec {
            RunSpec::Backup(spec) => proto::run::Spec::Backup(proto::BackupSpec {
                kind: backup_kind_out(spec.kind),
                location: spec.location_id.to_string(),
                filter: Some(proto::PathFilter {
                    include: spec.filter.include,
                    exclude: spec.filter.exclude,
                }),
                limits: Some(limits_out(&spec.limits)),
                labels: spec.labels.into_iter().collect(),
            }),
            RunSpec::Restore(spec) => proto::run::Spec::Restore(restore_spec_out(spec)),
        };
        Self {
            id: run.id.to_string(),
            cluster_id: run.cluster_id.to_string(),
            cluster_name: run.cluster_name,
            kind: match run.kind {
                RunKind::Backup => proto::RunKind::Backup,
                RunKind::Restore => proto::RunKind::Restore,
            }
            .into(),
            state: run_state_out(run.state).into(),
            spec: Some(spec),
            dry_run: run.dry_run,
            idempotency_key: run.idempotency_key.unwrap_or_default(),
            schedule_id: run.schedule_id.map(|id| id.to_string()).unwrap_or_default(),
            // A backup run's backup exists only once committed.
            backup_id: run
                .backup_id
                .filter(|_| run.kind == RunKind::Restore || run.state == RunState::Succeeded)
                .map(|id| id.to_string())
                .unwrap_or_default(),
            error_message: run.error,
            create_time: timestamp(run.create_time),
            start_time: run.start_time.and_then(timestamp),
            finish_time: run.finish_time.and_then(timestamp),
            update_time: timestamp(run.update_time),
            nodes: run.nodes.into_iter().map(Into::into).collect(),
            totals: Some(totals),
        }
    }
}

impl TryFrom<proto::StartRestoreRequest> for crate::restores::StartRestore {
    type Error = Error;

    fn try_from(request: proto::StartRestoreRequest) -> Result<Self> {
        use crate::restores::SourceRequest;
        if request.cluster.is_empty() {
            return Err(Error::invalid(
                "cluster",
                "is required (the target cluster's name or id)",
            ));
        }
        let spec = request
            .restore
            .ok_or_else(|| Error::invalid("restore", "is required (what to restore)"))?;
        let source = match spec.source {
            None => {
                return Err(Error::invalid(
                    "restore.source",
                    "give backup_id or point_in_time",
                ));
            }
            Some(proto::restore_spec::Source::BackupId(id)) => {
                SourceRequest::BackupId(parse_id("restore.backup_id", "backup", &id)?)
            }
            Some(proto::restore_spec::Source::PointInTime(point)) => {
                if point.source_cluster.is_empty() {
                    return Err(Error::invalid(
                        "restore.point_in_time.source_cluster",
                        "is required (a cluster name or id)",
                    ));
                }
                let as_of_ms = timestamp_ms("restore.point_in_time.as_of_time", point.as_of_time)?
                    .ok_or_else(|| {
                        Error::invalid("restore.point_in_time.as_of_time", "is required")
                    })?;
                SourceRequest::PointInTime {
                    cluster: point.source_cluster,
                    as_of_ms,
                    location: point.location,
                }
            }
        };
        let mappings = spec
            .node_mappings
            .iter()
            .enumerate()
            .map(|(index, mapping)| {
                let field = format!("restore.node_mappings[{index}]");
                Ok(crate::model::run::NodeMapping {
                    source_node_id: parse_id(
                        &format!("{field}.source_node_id"),
                        "node",
                        &mapping.source_node_id,
                    )?,
                    target_node_id: parse_id(
                        &format!("{field}.target_node_id"),
                        "node",
                        &mapping.target_node_id,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let hook = match spec.post_restore_hook {
            None => None,
            Some(hook) if hook.command.is_empty() => {
                return Err(Error::invalid(
                    "restore.post_restore_hook.command",
                    "needs at least the program",
                ));
            }
            Some(hook) => {
                if hook
                    .command
                    .iter()
                    .any(|arg| arg.contains('\0') || arg.len() > 4096)
                    || hook.command.len() > 256
                {
                    return Err(Error::invalid(
                        "restore.post_restore_hook.command",
                        "at most 256 arguments of at most 4096 bytes, without NUL",
                    ));
                }
                let timeout_seconds = match hook.timeout {
                    None => 0,
                    Some(timeout) => {
                        let timeout = Duration::try_from(timeout).map_err(|_| {
                            Error::invalid(
                                "restore.post_restore_hook.timeout",
                                "must not be negative",
                            )
                        })?;
                        u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX)
                    }
                };
                Some(crate::model::run::RestoreHook {
                    command: hook.command,
                    timeout_seconds,
                })
            }
        };
        let idempotency_key = idempotency_key(request.idempotency_key)?;
        Ok(Self {
            cluster: request.cluster,
            source,
            mappings,
            filter: path_filter("restore.filter", spec.filter)?,
            overwrite: spec.overwrite,
            limits: limits("restore.limits", spec.limits)?,
            hook,
            dry_run: request.dry_run,
            idempotency_key,
        })
    }
}

fn restore_spec_out(spec: crate::model::run::RestoreSpec) -> proto::RestoreSpec {
    use crate::model::run::RestoreSource;
    let source = match spec.source {
        RestoreSource::BackupId(id) => proto::restore_spec::Source::BackupId(id.to_string()),
        RestoreSource::PointInTime {
            source_cluster_id,
            as_of_ms,
            location_id,
        } => proto::restore_spec::Source::PointInTime(proto::PointInTime {
            source_cluster: source_cluster_id.to_string(),
            as_of_time: Some(prost_types::Timestamp {
                seconds: as_of_ms.div_euclid(1000),
                nanos: i32::try_from(as_of_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
            }),
            location: location_id.map(|id| id.to_string()).unwrap_or_default(),
        }),
    };
    proto::RestoreSpec {
        source: Some(source),
        node_mappings: spec
            .mappings
            .iter()
            .map(|mapping| proto::NodeMapping {
                source_node_id: mapping.source_node_id.to_string(),
                target_node_id: mapping.target_node_id.to_string(),
            })
            .collect(),
        filter: Some(proto::PathFilter {
            include: spec.filter.include,
            exclude: spec.filter.exclude,
        }),
        overwrite: spec.overwrite,
        limits: Some(limits_out(&spec.limits)),
        post_restore_hook: spec.hook.map(|hook| proto::RestoreHook {
            command: hook.command,
            timeout: (hook.timeout_seconds > 0).then(|| prost_types::Duration {
                seconds: i64::from(hook.timeout_seconds),
                nanos: 0,
            }),
        }),
    }
}

fn limits_out(limits: &TransferLimits) -> proto::TransferLimits {
    proto::TransferLimits {
        rate_limit_bytes_per_second: i64::try_from(limits.rate_limit_bytes_per_second)
            .unwrap_or(i64::MAX),
        concurrency: i32::try_from(limits.concurrency).unwrap_or(i32::MAX),
        node_parallelism: i32::try_from(limits.node_parallelism).unwrap_or(i32::MAX),
    }
}
