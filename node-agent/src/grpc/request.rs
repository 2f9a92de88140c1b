//! Requests checked and converted into the agent's own types: a bad field is INVALID_ARGUMENT
//! naming it.

use std::path::PathBuf;

use coffer_format::Compression;
use coffer_format::filter::{PathFilter, PathMatcher};
use coffer_format::object::Keyring;
use coffer_format::storage::{SecretSource, StorageConfig};
use coffer_proto::agent::v1 as proto;
use tonic::Status;
use uuid::Uuid;

use super::status::storage_status;

pub(super) fn storage_config(
    location: Option<proto::StorageLocation>,
) -> Result<StorageConfig, Status> {
    let location = location.ok_or_else(|| Status::invalid_argument("location is required"))?;
    let secrets = location
        .secrets
        .into_iter()
        .map(|(key, reference)| {
            let source = match reference.source {
                Some(proto::secret_ref::Source::Env(name)) => SecretSource::Env(name),
                Some(proto::secret_ref::Source::File(path)) => {
                    SecretSource::File(PathBuf::from(path))
                }
                None => {
                    return Err(Status::invalid_argument(format!(
                        "secret {key} has no source"
                    )));
                }
            };
            Ok((key, source))
        })
        .collect::<Result<_, _>>()?;
    Ok(StorageConfig {
        location_id: location.location_id,
        name: location.name,
        scheme: location.scheme,
        options: location.options.into_iter().collect(),
        secrets,
    })
}

/// Opens the location a request names, with the keys it is sealed with, if this agent's
/// storage policy allows it (FAILED_PRECONDITION naming the rule otherwise).
pub(super) fn open(
    policy: &crate::storage_policy::StoragePolicy,
    location: Option<proto::StorageLocation>,
) -> Result<(StorageConfig, opendal::Operator, Keyring), Status> {
    let config = storage_config(location)?;
    let refused =
        |reason: String| Status::failed_precondition(format!("location {}: {reason}", config.name));
    policy.permit(&config).map_err(refused)?;
    let keys = policy.keyring(&config).map_err(refused)?;
    let operator = coffer_format::open_operator(&config)
        .map_err(|error| storage_status(error.in_location(&config.name)))?;
    Ok((config, operator, keys))
}

/// Checks a path relative to a location's root: no absolute paths, no `..`, no empty parts.
pub(super) fn object_path(path: &str) -> Result<&str, Status> {
    let valid = !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').enumerate().all(|(index, part)| {
            part != ".."
                && part != "."
                && (!part.is_empty() || index == path.split('/').count() - 1)
        });
    if valid {
        Ok(path)
    } else {
        Err(Status::invalid_argument(format!(
            "{path:?} is not a relative object path"
        )))
    }
}

pub(super) fn parse_uuid(field: &str, text: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(text)
        .map_err(|_| Status::invalid_argument(format!("{field}: {text:?} is not a UUID")))
}

/// The request's include and exclude patterns, compiled once for the whole call.
pub(super) fn path_filter(
    include: Vec<String>,
    exclude: Vec<String>,
) -> Result<PathMatcher, Status> {
    PathFilter { include, exclude }
        .compile()
        .map_err(|error| Status::invalid_argument(error.to_string()))
}

/// The compression an upload request asks for; unset means the default (zstd level 1).
pub(super) fn compression(
    requested: Option<proto::ObjectCompression>,
) -> Result<Compression, Status> {
    match requested {
        None => Ok(Compression::DEFAULT),
        Some(proto::ObjectCompression {
            none: true,
            zstd_level: 0,
        }) => Ok(Compression::None),
        Some(proto::ObjectCompression { none: true, .. }) => Err(Status::invalid_argument(
            "compression: a zstd level was given with no compression",
        )),
        Some(proto::ObjectCompression { zstd_level: 0, .. }) => Ok(Compression::DEFAULT),
        Some(proto::ObjectCompression { zstd_level, .. }) => Compression::zstd(zstd_level)
            .map_err(|error| Status::invalid_argument(format!("compression: {error}"))),
    }
}
