//! Locations.

use coffer_proto::v1 as proto;

use super::{duration, timestamp};
use crate::error::{Error, Result};
use crate::lifecycle::import::ImportReport;
use crate::model::location::{
    CheckStep, Compression, ListLocations, Location, LocationOptions, LocationUpdate, NewLocation,
    NodeLocationCheck, SecretRef,
};
use crate::model::page::Cursor;
use crate::model::{Name, parse_page_size};

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
        let encryption_key = (!request.encryption_key.is_empty())
            .then(|| Name::parse("encryption_key", &request.encryption_key))
            .transpose()?;
        Ok(Self {
            name,
            options,
            compression,
            encryption_key,
        })
    }
}

impl TryFrom<proto::UpdateLocationRequest> for LocationUpdate {
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
        let encryption_key = match request.encryption_key.as_deref() {
            None => None,
            Some("") => {
                return Err(Error::invalid(
                    "encryption_key",
                    "an encrypted location stays encrypted: give the name of its new key",
                ));
            }
            Some(key) => Some(Name::parse("encryption_key", key)?),
        };
        if name.is_none() && options.is_none() && compression.is_none() && encryption_key.is_none()
        {
            return Err(Error::invalid(
                "name",
                "nothing to change: give a new name, new options, a new compression or a new \
                 encryption key",
            ));
        }
        Ok(Self {
            location: request.location,
            name,
            options,
            compression,
            encryption_key,
        })
    }
}

fn check_step(step: CheckStep) -> Option<proto::LocationCheckStep> {
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

impl From<NodeLocationCheck> for proto::LocationNodeCheck {
    fn from(check: NodeLocationCheck) -> Self {
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
            encryption_key: location
                .encryption_key
                .map(|key| key.to_string())
                .unwrap_or_default(),
        }
    }
}

impl TryFrom<proto::ListLocationsRequest> for ListLocations {
    type Error = Error;

    fn try_from(request: proto::ListLocationsRequest) -> Result<Self> {
        Ok(Self {
            page_size: parse_page_size("page_size", request.page_size)?,
            after: Cursor::parse_name("page_token", &request.page_token)?,
            kind: location_kind(request.kind)?,
        })
    }
}

/// The kind filter of ListLocations.
fn location_kind(kind: i32) -> Result<Option<&'static str>> {
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

impl From<ImportReport> for proto::ImportLocationResponse {
    fn from(report: ImportReport) -> Self {
        Self {
            clusters_imported: report.clusters_imported,
            clusters_matched: report.clusters_matched,
            backups_imported: report.backups_imported,
            backups_present: report.backups_present,
            backups_uncommitted: report.backups_uncommitted,
            schedules_imported: report.schedules_imported,
            schedules_present: report.schedules_present,
            skipped: report.skipped,
        }
    }
}
