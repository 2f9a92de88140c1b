//! Conversions between `coffer.v1` messages and the domain, one file per service; the helpers
//! here are shared by several. Requests are validated on the way in (`TryFrom`, naming the
//! field at fault); answers convert with `From`.

mod backup;
mod cluster;
mod location;
mod restore;
mod run;
mod schedule;
mod token;

use std::time::{Duration, SystemTime};

use coffer_proto::v1 as proto;
use uuid::Uuid;

use crate::backups;
use crate::error::{Error, Result};
use coffer_format::filter::PathMatcher;

use crate::model::run::{BackupKind, PathFilter, TransferLimits};

pub(super) fn timestamp(time: SystemTime) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(time))
}

pub(super) fn duration(duration: Duration) -> Option<prost_types::Duration> {
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

pub(super) fn backup_kind(field: &str, kind: i32) -> Result<Option<BackupKind>> {
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

/// A requested validation's thoroughness (depth and sample), checked.
pub(super) fn thoroughness(
    field: &str,
    depth: i32,
    sample_percent: u32,
) -> Result<crate::model::validation::Thoroughness> {
    use crate::model::validation::{Depth, Thoroughness};
    let depth = match proto::ValidationDepth::try_from(depth) {
        Ok(proto::ValidationDepth::Unspecified | proto::ValidationDepth::Quick) => Depth::Quick,
        Ok(proto::ValidationDepth::Deep) => Depth::Deep,
        Err(_) => {
            return Err(Error::invalid(
                format!("{field}depth"),
                format!("{depth} is not a validation depth"),
            ));
        }
    };
    Thoroughness::new(depth, sample_percent)
        .map_err(|reason| Error::invalid(format!("{field}sample_percent"), reason))
}

/// A validation's depth in the API.
pub(super) fn depth_out(depth: crate::model::validation::Depth) -> i32 {
    use crate::model::validation::Depth;
    match depth {
        Depth::Quick => proto::ValidationDepth::Quick,
        Depth::Deep => proto::ValidationDepth::Deep,
    }
    .into()
}

pub(super) fn backup_kind_out(kind: BackupKind) -> i32 {
    match kind {
        BackupKind::Full => proto::BackupKind::Full,
        BackupKind::Incremental => proto::BackupKind::Incremental,
    }
    .into()
}

/// Validates an idempotency key (empty means none).
pub(super) fn idempotency_key(key: String) -> Result<Option<String>> {
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
    let filter = PathFilter {
        include: filter.include,
        exclude: filter.exclude,
    };
    compile_filter(field, &filter)?;
    Ok(filter)
}

/// Compiles a path filter read from `field`, naming the pattern at fault.
pub(super) fn compile_filter(field: &str, filter: &PathFilter) -> Result<PathMatcher> {
    filter
        .compile()
        .map_err(|error| Error::invalid(format!("{field}.{}", error.field), error.reason))
}

pub(super) fn limits(field: &str, limits: Option<proto::TransferLimits>) -> Result<TransferLimits> {
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

pub(super) fn limits_out(limits: &TransferLimits) -> proto::TransferLimits {
    proto::TransferLimits {
        rate_limit_bytes_per_second: i64::try_from(limits.rate_limit_bytes_per_second)
            .unwrap_or(i64::MAX),
        concurrency: i32::try_from(limits.concurrency).unwrap_or(i32::MAX),
        node_parallelism: i32::try_from(limits.node_parallelism).unwrap_or(i32::MAX),
    }
}
