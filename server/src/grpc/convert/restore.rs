//! Restores.

use coffer_proto::v1 as proto;

use std::time::Duration;

use super::{idempotency_key, limits, parse_id, path_filter, timestamp_ms};
use crate::error::{Error, Result};
use crate::restores::StartRestore;

impl TryFrom<proto::StartRestoreRequest> for StartRestore {
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
            Some(hook) if hook.command.len() != 1 => {
                return Err(Error::invalid(
                    "restore.post_restore_hook.command",
                    "one element: the name of a hook of the agents' configuration \
                     ([restore-hooks]); agents run no command sent to them",
                ));
            }
            Some(hook) => {
                let name = &hook.command[0];
                let valid = !name.is_empty()
                    && name.len() <= 63
                    && name.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                    });
                if !valid {
                    return Err(Error::invalid(
                        "restore.post_restore_hook.command",
                        format!(
                            "{name:?} is not a hook name (lowercase letters, digits, '-' and '_')"
                        ),
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
            // The handler fills in the caller.
            started_by: String::new(),
        })
    }
}
