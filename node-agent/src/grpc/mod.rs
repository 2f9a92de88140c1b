//! The gRPC face of the agent: handlers convert and delegate to [`Agent`], the snapshot
//! provider, the upload and restore pipelines and the location's storage.
//!
//! Errors reach only the Coffer server, which shows them to operators inside run and node
//! messages: they carry the storage's or the provider's own message.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use coffer_format::manifest::NodeManifestReader;
use coffer_format::object::{RateLimiter, sync_name};
use coffer_format::{MARKER_PATH, StorageError};
use coffer_proto::agent::v1 as proto;
use coffer_proto::agent::v1::agent_service_server::{AgentService, AgentServiceServer};
use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use uuid::Uuid;

use crate::Agent;
use crate::metrics::Outcome;
use crate::restore::{self, RestoreFailure, RestoreHook, RestoreJob};
use crate::snapshot::{FileList, UnchangedFiles};
use crate::upload::{self, UploadFailure, UploadJob};
use crate::verify;

mod request;
mod status;

use request::{compression, object_path, open, parse_uuid, path_filter};
use status::{
    manifest_status, restore_status, sealed_status, snapshot_status, storage_status, upload_status,
};

/// Largest object served by GetObject.
const MAX_GET_OBJECT: u64 = 64 * 1024 * 1024;
/// Most manifest entries in one ReadNodeManifest answer (about 200 bytes each): each page
/// decodes the manifest from its start, so a whole-manifest reader (validation, purge) wants
/// few, large pages.
const MAX_MANIFEST_PAGE: u32 = 50_000;

/// Most objects in one VerifyObjects call.
const MAX_VERIFY_OBJECTS: usize = 1000;

/// Implements `coffer.agent.v1.AgentService`.
#[derive(Debug, Clone)]
pub struct AgentHandler {
    agent: Arc<Agent>,
}

impl AgentHandler {
    /// Opens the location a request names (see [`open`]), its storage requests counted in the
    /// agent's metrics.
    fn open(
        &self,
        location: Option<proto::StorageLocation>,
    ) -> Result<
        (
            coffer_format::StorageConfig,
            opendal::Operator,
            coffer_format::object::Keyring,
        ),
        Status,
    > {
        let (config, operator, keys) = open(&self.agent.config().storage, location)?;
        Ok((
            config,
            operator.layer(self.agent.metrics().storage_layer()),
            keys,
        ))
    }
}

/// Forwards a long call's progress updates to its response stream until the work stops
/// reporting; a client that went away (or stopped reading) cancels the work.
async fn relay_progress<P, M>(
    progress: &mut tokio::sync::mpsc::Receiver<P>,
    sender: &tokio::sync::mpsc::Sender<Result<M, Status>>,
    cancel: &CancellationToken,
    message: impl Fn(P) -> M,
) {
    loop {
        tokio::select! {
            update = progress.recv() => match update {
                Some(update) => {
                    if sender.send(Ok(message(update))).await.is_err() {
                        cancel.cancel();
                    }
                }
                None => return,
            },
            () = sender.closed() => {
                cancel.cancel();
                return;
            }
        }
    }
}

impl AgentHandler {
    /// Validates a RestoreNode request into a job: ids are UUIDs, the manifest path is relative,
    /// the location opens, the patterns parse.
    fn restore_job(&self, request: proto::RestoreNodeRequest) -> Result<RestoreJob, Status> {
        let (config, operator, keys) = self.open(request.location)?;
        // A hook is named; the command is the one this agent's configuration gives the name,
        // never one from the wire.
        let hook = match request.hook_command.as_slice() {
            [] => None,
            [name] => {
                let hooks = &self.agent.config().restore_hooks;
                let Some(argv) = hooks.get(name) else {
                    return Err(Status::failed_precondition(format!(
                        "this agent has no restore hook named {name:?} ([restore-hooks] in its \
                         configuration names {}); restore without a hook, or add it there",
                        if hooks.is_empty() {
                            "none".to_string()
                        } else {
                            hooks.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    )));
                };
                Some(RestoreHook {
                    argv: argv.clone(),
                    timeout: match request.hook_timeout_seconds {
                        0 => restore::DEFAULT_HOOK_TIMEOUT,
                        seconds => Duration::from_secs(seconds.into()),
                    },
                })
            }
            _ => {
                return Err(Status::invalid_argument(
                    "hook_command: one element, the name of a hook of the agent's configuration \
                     ([restore-hooks]); agents run no command sent to them",
                ));
            }
        };
        Ok(RestoreJob {
            run_id: request.run_id,
            operator,
            keys,
            location_name: config.name,
            source_cluster_id: parse_uuid("source_cluster_id", &request.source_cluster_id)?,
            backup_id: parse_uuid("backup_id", &request.backup_id)?,
            source_node_id: parse_uuid("source_node_id", &request.source_node_id)?,
            manifest_path: object_path(&request.manifest_path)?.to_string(),
            node_id: self.agent.node_id(),
            data_paths: self.agent.config().data_paths.clone(),
            filter: path_filter(request.include, request.exclude)?,
            overwrite: request.overwrite,
            dry_run: request.dry_run,
            limiter: (request.rate_limit_bytes_per_second > 0)
                .then(|| RateLimiter::new(request.rate_limit_bytes_per_second)),
            concurrency: match request.concurrency {
                0 => restore::DEFAULT_CONCURRENCY,
                n => n as usize,
            },
            hook,
            keep_free: self.agent.config().restore_keep_free,
        })
    }
}

#[tonic::async_trait]
impl AgentService for AgentHandler {
    async fn get_node_info(
        &self,
        _request: Request<proto::GetNodeInfoRequest>,
    ) -> Result<Response<proto::GetNodeInfoResponse>, Status> {
        let node = self.agent.node_info().await;
        Ok(Response::new(proto::GetNodeInfoResponse {
            node: Some(node),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<proto::CreateSnapshotRequest>,
    ) -> Result<Response<proto::CreateSnapshotResponse>, Status> {
        let request = request.into_inner();
        let tag = request.tag;
        let snapshots = self.agent.snapshots();
        let snapshot = if request.incremental_location_id.is_empty() {
            snapshots.create(&tag).await
        } else {
            // The journal of the location's key: its objects are named with that key.
            let journal = match request.incremental_encryption_key.as_str() {
                "" => self.agent.journal(),
                name => self.agent.journal_named(name).ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "this agent has no encryption key named {name:?}: add a [[keys]] entry \
                         with that name"
                    ))
                })?,
            };
            let unchanged = UnchangedFiles {
                journal: journal.clone(),
                location_id: request.incremental_location_id,
            };
            snapshots.create_incremental(&tag, unchanged).await
        };
        let metrics = self.agent.metrics();
        metrics.snapshot(if snapshot.is_ok() {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        });
        let snapshot = snapshot.map_err(snapshot_status)?;
        tracing::info!(tag, files = snapshot.files.len(), "snapshot taken");
        Ok(Response::new(proto::CreateSnapshotResponse {
            file_count: snapshot.files.len() as u64,
            total_bytes: snapshot.total_bytes(),
        }))
    }

    type UploadSnapshotStream =
        Pin<Box<dyn Stream<Item = Result<proto::UploadSnapshotResponse, Status>> + Send + 'static>>;

    async fn upload_snapshot(
        &self,
        request: Request<proto::UploadSnapshotRequest>,
    ) -> Result<Response<Self::UploadSnapshotStream>, Status> {
        let request = request.into_inner();
        let incremental = request.kind() == proto::BackupKind::Incremental;
        let (config, operator, keys) = self.open(request.location.clone())?;
        let compression = compression(request.compression)?;
        let cluster_id = parse_uuid("cluster_id", &request.cluster_id)?;
        let backup_id = if request.dry_run {
            Uuid::nil()
        } else {
            parse_uuid("backup_id", &request.backup_id)?
        };
        let (files, unlinked_for) = if request.dry_run {
            let files = self
                .agent
                .snapshots()
                .walk_live()
                .await
                .map_err(snapshot_status)?;
            (FileList::from_vec(files), None)
        } else {
            let snapshot = self
                .agent
                .snapshots()
                .load(&request.tag)
                .await
                .map_err(snapshot_status)?;
            let unlinked_for = snapshot.unlinked_for.clone();
            (snapshot.files, unlinked_for)
        };
        let temp_dir = self.agent.config().state_dir.join("tmp");
        tokio::fs::create_dir_all(&temp_dir)
            .await
            .map_err(|error| Status::internal(format!("create {}: {error}", temp_dir.display())))?;
        let job = UploadJob {
            files,
            unlinked_for,
            operator,
            location_id: config.location_id.clone(),
            location_name: config.name.clone(),
            cluster_id,
            backup_id,
            node_id: self.agent.node_id(),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            data_paths: self.agent.config().data_paths.clone(),
            incremental,
            filter: path_filter(request.include, request.exclude)?,
            limiter: (request.rate_limit_bytes_per_second > 0)
                .then(|| RateLimiter::new(request.rate_limit_bytes_per_second)),
            concurrency: match request.concurrency {
                0 => upload::DEFAULT_CONCURRENCY,
                n => n as usize,
            },
            dry_run: request.dry_run,
            journal: self.agent.journal_for(&keys).clone(),
            temp_dir,
            quirks: config.quirks(),
            compression,
            keys,
        };
        let (sender, receiver) =
            tokio::sync::mpsc::channel::<Result<proto::UploadSnapshotResponse, Status>>(16);
        let (progress_sender, mut progress) = tokio::sync::mpsc::channel(16);
        let cancel = CancellationToken::new();
        let tag = request.tag.clone();
        let metrics = self.agent.metrics().clone();
        tokio::spawn(async move {
            let work = tokio::spawn(
                upload::run(job, progress_sender, cancel.clone())
                    .instrument(tracing::info_span!("upload", tag = %tag)),
            );
            // Forward progress; a server that went away cancels the upload.
            relay_progress(&mut progress, &sender, &cancel, |update| {
                proto::UploadSnapshotResponse {
                    event: Some(proto::upload_snapshot_response::Event::Progress(update)),
                }
            })
            .await;
            let result = match work.await {
                Ok(result) => result,
                Err(error) => Err(UploadFailure::File(format!("upload task failed: {error}"))),
            };
            let message = match result {
                Ok(summary) => {
                    metrics.upload_succeeded(&summary);
                    tracing::info!(tag, objects = summary.objects_uploaded, "upload finished");
                    Ok(proto::UploadSnapshotResponse {
                        event: Some(proto::upload_snapshot_response::Event::Done(summary)),
                    })
                }
                Err(UploadFailure::Canceled) => {
                    metrics.upload_failed(Outcome::Canceled);
                    tracing::info!(tag, "upload canceled");
                    Err(upload_status(UploadFailure::Canceled))
                }
                Err(error) => {
                    metrics.upload_failed(Outcome::Failed);
                    tracing::warn!(tag, %error, "upload failed");
                    Err(upload_status(error))
                }
            };
            let _ = sender.send(message).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    type RestoreNodeStream =
        Pin<Box<dyn Stream<Item = Result<proto::RestoreNodeResponse, Status>> + Send + 'static>>;

    async fn restore_node(
        &self,
        request: Request<proto::RestoreNodeRequest>,
    ) -> Result<Response<Self::RestoreNodeStream>, Status> {
        let request = request.into_inner();
        let job = self.restore_job(request)?;
        let backup_id = job.backup_id;
        let claim = self.agent.claim_restore(backup_id).ok_or_else(|| {
            Status::aborted(format!(
                "a restore of backup {backup_id} is running on this node already"
            ))
        })?;
        let span = tracing::info_span!(
            "restore",
            run_id = %job.run_id,
            backup_id = %backup_id,
            source_node = %job.source_node_id,
            dry_run = job.dry_run,
        );
        let (sender, receiver) =
            tokio::sync::mpsc::channel::<Result<proto::RestoreNodeResponse, Status>>(16);
        let (progress_sender, mut progress) = tokio::sync::mpsc::channel(16);
        let cancel = CancellationToken::new();
        let metrics = self.agent.metrics().clone();
        tokio::spawn(
            async move {
                let _claim = claim;
                let work = tokio::spawn(
                    restore::run(job, progress_sender, cancel.clone()).in_current_span(),
                );
                // Forward progress; a server that went away cancels the restore.
                relay_progress(&mut progress, &sender, &cancel, |update| {
                    proto::RestoreNodeResponse {
                        event: Some(proto::restore_node_response::Event::Progress(update)),
                    }
                })
                .await;
                let result = match work.await {
                    Ok(result) => result,
                    Err(error) => Err(RestoreFailure::Local {
                        action: "run the restore task",
                        path: PathBuf::new(),
                        source: std::io::Error::other(error),
                    }),
                };
                let message = match result {
                    Ok(summary) => {
                        metrics.restore_succeeded(&summary);
                        let placed = summary.progress.map_or(0, |p| p.files_placed);
                        tracing::info!(
                            placed,
                            overwritten = summary.files_overwritten,
                            "restore finished"
                        );
                        Ok(proto::RestoreNodeResponse {
                            event: Some(proto::restore_node_response::Event::Done(summary)),
                        })
                    }
                    Err(failure) => {
                        match &failure {
                            RestoreFailure::Canceled => {
                                metrics.restore_failed(Outcome::Canceled);
                                tracing::info!("restore canceled");
                            }
                            failure => {
                                metrics.restore_failed(Outcome::Failed);
                                tracing::warn!(error = %failure, "restore failed");
                            }
                        }
                        Err(restore_status(failure))
                    }
                };
                let _ = sender.send(message).await;
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn delete_snapshot(
        &self,
        request: Request<proto::DeleteSnapshotRequest>,
    ) -> Result<Response<proto::DeleteSnapshotResponse>, Status> {
        let tag = request.into_inner().tag;
        let removed = self
            .agent
            .snapshots()
            .delete(&tag)
            .await
            .map_err(snapshot_status)?;
        if removed {
            tracing::info!(tag, "snapshot removed");
        }
        Ok(Response::new(proto::DeleteSnapshotResponse { removed }))
    }

    async fn put_object(
        &self,
        request: Request<proto::PutObjectRequest>,
    ) -> Result<Response<proto::PutObjectResponse>, Status> {
        let request = request.into_inner();
        let path = object_path(&request.path)?.to_string();
        let (config, operator, keys) = self.open(request.location)?;
        refuse_sealed_objects(&keys, &path)?;
        // Manifests and descriptions are sealed like objects; the format marker stays in the
        // clear, so any Coffer can tell what the location is.
        let content = if path == MARKER_PATH {
            request.content
        } else {
            keys.seal_bytes(&request.content, Some(&path))
                .map_err(|error| Status::internal(format!("seal {path}: {error}")))?
                .into_owned()
        };
        operator.write(&path, content).await.map_err(|error| {
            storage_status(
                StorageError::backend(&operator, "write", &path, error).in_location(&config.name),
            )
        })?;
        // What the server puts is a backup's commit point or the location's marker: durable
        // with its name before the call returns.
        sync_name(&operator, &path)
            .await
            .map_err(|error| storage_status(error.in_location(&config.name)))?;
        Ok(Response::new(proto::PutObjectResponse {}))
    }

    async fn get_object(
        &self,
        request: Request<proto::GetObjectRequest>,
    ) -> Result<Response<proto::GetObjectResponse>, Status> {
        let request = request.into_inner();
        let path = object_path(&request.path)?.to_string();
        let (config, operator, keys) = self.open(request.location)?;
        refuse_sealed_objects(&keys, &path)?;
        let fail = |action: &'static str| {
            let name = config.name.clone();
            let path = path.clone();
            let operator = operator.clone();
            move |error| {
                storage_status(
                    StorageError::backend(&operator, action, &path, error).in_location(&name),
                )
            }
        };
        let metadata = operator.stat(&path).await.map_err(fail("stat"))?;
        if metadata.content_length() > MAX_GET_OBJECT {
            return Err(Status::failed_precondition(format!(
                "{path} is {} bytes, more than GetObject serves",
                metadata.content_length()
            )));
        }
        let stored = operator.read(&path).await.map_err(fail("read"))?.to_vec();
        let content = if path == MARKER_PATH {
            stored
        } else {
            keys.open_bytes(&stored, Some(&path))
                .map_err(|error| sealed_status(&config.name, &path, &error))?
        };
        Ok(Response::new(proto::GetObjectResponse { content }))
    }

    async fn list_objects(
        &self,
        request: Request<proto::ListObjectsRequest>,
    ) -> Result<Response<proto::ListObjectsResponse>, Status> {
        let request = request.into_inner();
        if !request.prefix.is_empty() {
            object_path(&request.prefix)?;
        }
        let (config, operator, _) = self.open(request.location)?;
        let entries = operator
            .list_with(&request.prefix)
            .recursive(request.recursive)
            .await
            .map_err(|error| {
                storage_status(
                    StorageError::backend(&operator, "list", &request.prefix, error)
                        .in_location(&config.name),
                )
            })?;
        Ok(Response::new(proto::ListObjectsResponse {
            paths: entries
                .into_iter()
                .map(|entry| entry.path().to_string())
                .collect(),
        }))
    }

    type ListObjectPagesStream = Pin<
        Box<dyn Stream<Item = Result<proto::ListObjectPagesResponse, Status>> + Send + 'static>,
    >;

    async fn list_object_pages(
        &self,
        request: Request<proto::ListObjectPagesRequest>,
    ) -> Result<Response<Self::ListObjectPagesStream>, Status> {
        let request = request.into_inner();
        object_path(&request.prefix)?;
        let page_size = match request.page_size {
            0 => 1000,
            n => n.min(10_000) as usize,
        };
        let (config, operator, _) = self.open(request.location)?;
        let prefix = request.prefix;
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let failed = |action: &'static str, path: &str, error| {
                storage_status(
                    StorageError::backend(&operator, action, path, error).in_location(&config.name),
                )
            };
            let listed = list_pages(&operator, &prefix, page_size, &sender).await;
            if let Err((action, path, error)) = listed {
                let _ = sender.send(Err(failed(action, &path, error))).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn delete_objects(
        &self,
        request: Request<proto::DeleteObjectsRequest>,
    ) -> Result<Response<proto::DeleteObjectsResponse>, Status> {
        use futures::StreamExt;
        let request = request.into_inner();
        if request.paths.len() > 10_000 {
            return Err(Status::invalid_argument(format!(
                "paths: {} paths, at most 10000 at once",
                request.paths.len()
            )));
        }
        let paths = request
            .paths
            .iter()
            .map(|path| object_path(path).map(str::to_string))
            .collect::<Result<Vec<_>, Status>>()?;
        let (config, operator, _) = self.open(request.location)?;
        let mut deletions = futures::stream::iter(paths)
            .map(|path| {
                let operator = operator.clone();
                async move { operator.delete(&path).await.map_err(|error| (path, error)) }
            })
            .buffer_unordered(16);
        let mut deleted = 0u64;
        while let Some(result) = deletions.next().await {
            match result {
                Ok(()) => deleted += 1,
                Err((path, error)) => {
                    let status = storage_status(
                        StorageError::backend(&operator, "delete", &path, error)
                            .in_location(&config.name),
                    );
                    return Err(Status::new(
                        status.code(),
                        format!("{} (after deleting {deleted})", status.message()),
                    ));
                }
            }
        }
        Ok(Response::new(proto::DeleteObjectsResponse { deleted }))
    }

    async fn delete_object(
        &self,
        request: Request<proto::DeleteObjectRequest>,
    ) -> Result<Response<proto::DeleteObjectResponse>, Status> {
        let request = request.into_inner();
        let path = object_path(&request.path)?.to_string();
        let (config, operator, _) = self.open(request.location)?;
        operator.delete(&path).await.map_err(|error| {
            storage_status(
                StorageError::backend(&operator, "delete", &path, error).in_location(&config.name),
            )
        })?;
        Ok(Response::new(proto::DeleteObjectResponse {}))
    }

    type VerifyObjectsStream =
        Pin<Box<dyn Stream<Item = Result<proto::VerifyObjectsResponse, Status>> + Send + 'static>>;

    async fn verify_objects(
        &self,
        request: Request<proto::VerifyObjectsRequest>,
    ) -> Result<Response<Self::VerifyObjectsStream>, Status> {
        use futures::StreamExt;
        let request = request.into_inner();
        if request.hashes.len() > MAX_VERIFY_OBJECTS {
            return Err(Status::invalid_argument(format!(
                "hashes: {} objects, at most {MAX_VERIFY_OBJECTS} at once",
                request.hashes.len()
            )));
        }
        let cluster_id = parse_uuid("cluster_id", &request.cluster_id)?;
        let hashes = request
            .hashes
            .iter()
            .map(|hex| {
                coffer_format::ContentHash::from_hex(hex).ok_or_else(|| {
                    Status::invalid_argument(format!("hashes: {hex:?} is not a content hash"))
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let (config, operator, keys) = self.open(request.location)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(verify::verify_objects(
            operator, keys, cluster_id, hashes, sender,
        ));
        let responses = tokio_stream::wrappers::ReceiverStream::new(receiver).map(move |outcome| {
            outcome
                .map(|verified| proto::VerifyObjectsResponse {
                    hash: verified.hash.to_hex(),
                    condition: match verified.condition {
                        verify::Condition::Intact => proto::ObjectCondition::Intact,
                        verify::Condition::Missing => proto::ObjectCondition::Missing,
                        verify::Condition::Damaged => proto::ObjectCondition::Damaged,
                    } as i32,
                    message: verified.message,
                    stored_bytes: verified.stored_bytes,
                })
                .map_err(|error| storage_status(error.in_location(&config.name)))
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn read_node_manifest(
        &self,
        request: Request<proto::ReadNodeManifestRequest>,
    ) -> Result<Response<proto::ReadNodeManifestResponse>, Status> {
        let request = request.into_inner();
        let path = object_path(&request.path)?.to_string();
        let (_, operator, keys) = self.open(request.location)?;
        let limit = request.limit.clamp(1, MAX_MANIFEST_PAGE) as usize;
        let (entries, more, total) =
            NodeManifestReader::read_page(&operator, &path, &keys, request.offset, limit)
                .await
                .map_err(manifest_status)?;
        Ok(Response::new(proto::ReadNodeManifestResponse {
            entries: entries
                .into_iter()
                .map(|entry| proto::ManifestEntry {
                    path: entry.path,
                    size: entry.size,
                    mode: entry.mode,
                    mtime_ns: entry.mtime_ns,
                    hash: entry.hash.to_hex(),
                    pack: entry
                        .packed
                        .map(|slice| slice.pack.to_hex())
                        .unwrap_or_default(),
                    pack_offset: entry.packed.map_or(0, |slice| slice.offset),
                })
                .collect(),
            more,
            total,
        }))
    }
}

/// GetObject and PutObject serve what the server keeps beside the objects (manifests, the
/// cluster's description, probes): in an encrypted location they neither open nor seal objects,
/// which only uploads, restores and verification touch, so the agent API is no decryption
/// service for a location's content.
fn refuse_sealed_objects(keys: &coffer_format::object::Keyring, path: &str) -> Result<(), Status> {
    if keys.is_sealed() && coffer_format::ClusterLayout::is_object_path(path) {
        return Err(Status::invalid_argument(format!(
            "{path} is an object of an encrypted location: objects are stored by backups and \
             read by restores and validations, not through GetObject or PutObject"
        )));
    }
    Ok(())
}

/// The agent's router: its API, gRPC health, and reflection (v1 and v1alpha).
pub async fn router(agent: Arc<Agent>) -> Router {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServiceServer<AgentHandler>>()
        .await;
    let (reflection_v1, reflection_v1alpha) =
        match coffer_proto::reflection::services(&[proto::FILE_DESCRIPTOR_SET]) {
            Ok((v1, v1alpha)) => (Some(v1), Some(v1alpha)),
            Err(error) => {
                // The descriptor set is compiled into the binary, so this is a build defect;
                // serving without reflection still beats not serving at all.
                tracing::error!(%error, "build reflection services");
                (None, None)
            }
        };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(
            AgentServiceServer::new(AgentHandler { agent })
                .max_decoding_message_size(80 * 1024 * 1024)
                .max_encoding_message_size(80 * 1024 * 1024),
        )
}

/// Streams the objects below `prefix` in pages of `page_size`; stops early when the receiver
/// went away. Sizes come from the listing when the backend gives them (object stores), else
/// from a stat of each file (a local folder).
async fn list_pages(
    operator: &opendal::Operator,
    prefix: &str,
    page_size: usize,
    sender: &tokio::sync::mpsc::Sender<Result<proto::ListObjectPagesResponse, Status>>,
) -> Result<(), (&'static str, String, opendal::Error)> {
    use futures::TryStreamExt;
    let stat_each = operator.info().scheme() == "fs";
    let mut lister = operator
        .lister_with(prefix)
        .recursive(true)
        .await
        .map_err(|error| ("list", prefix.to_string(), error))?;
    let mut page = Vec::with_capacity(page_size);
    while let Some(entry) = lister
        .try_next()
        .await
        .map_err(|error| ("list", prefix.to_string(), error))?
    {
        if !entry.metadata().is_file() {
            continue;
        }
        let stat;
        let metadata = if stat_each {
            stat = match operator.stat(entry.path()).await {
                Ok(metadata) => metadata,
                // Gone since it was listed (a purge, a failed upload's cleanup).
                Err(error) if error.kind() == opendal::ErrorKind::NotFound => continue,
                Err(error) => return Err(("stat", entry.path().to_string(), error)),
            };
            &stat
        } else {
            entry.metadata()
        };
        page.push(proto::ListedObject {
            path: entry.path().to_string(),
            size: metadata.content_length(),
            modify_time_ms: metadata
                .last_modified()
                .map(|time| time.into_inner().as_millisecond())
                .unwrap_or(0),
        });
        if page.len() >= page_size {
            let full = std::mem::replace(&mut page, Vec::with_capacity(page_size));
            if sender
                .send(Ok(proto::ListObjectPagesResponse { objects: full }))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
    if !page.is_empty() {
        let _ = sender
            .send(Ok(proto::ListObjectPagesResponse { objects: page }))
            .await;
    }
    Ok(())
}
