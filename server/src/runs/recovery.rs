//! Recovery at start-up: runs the catalog shows in flight were interrupted by a stop or crash
//! of the server. Each is finished truthfully: a backup whose commit manifest made it to storage
//! is recorded as committed; anything else failed (or canceled, if it was being canceled); its
//! snapshots are removed either way. And on every node, the snapshots of runs that ended and
//! that their run could not remove (its agent was lost at the time).

use std::time::SystemTime;

use crate::agents::{snapshot, stored};
use crate::error::{Error, Result};
use crate::model::Cluster;
use crate::model::backup::BackupRecord;
use crate::model::run::{NodePhase, Run, RunSpec, RunState};
use crate::runs::RunManager;

/// Removes from the nodes of `cluster` the snapshots of runs that ended: a run whose agent was
/// lost (killed, unreachable) could not remove its snapshot, which pins the disk space of every
/// file it links. Nodes that do not answer are left for next time; a tag that names no run of
/// this catalog is not Coffer's to remove, and is kept.
pub(super) async fn remove_leftover_snapshots(manager: &RunManager, cluster: &Cluster) {
    let addresses: Vec<_> = cluster
        .nodes
        .iter()
        .map(|node| node.spec.address.clone())
        .collect();
    let answers = manager.agents().node_infos(&addresses).await;
    for (node, answer) in cluster.nodes.iter().zip(answers) {
        let Ok(answer) = answer else { continue };
        for tag in answer.snapshot_tags {
            let Ok(run_id) = uuid::Uuid::parse_str(&tag) else {
                continue;
            };
            let ended = match manager.catalog().get_run(run_id).await {
                Ok(Some(run)) => run.state.is_final(),
                Ok(None) => false,
                Err(error) => {
                    tracing::warn!(%error, %run_id, "look up the run of a leftover snapshot");
                    false
                }
            };
            if !ended {
                continue;
            }
            match snapshot::delete(manager.agents(), node, tag).await {
                Ok(()) => tracing::info!(node_id = %node.info.node_id, %run_id,
                    "removed the snapshot an ended run left"),
                Err(error) => tracing::warn!(node_id = %node.info.node_id, %run_id, %error,
                    "could not remove the snapshot an ended run left"),
            }
        }
    }
}

/// Finishes every run a previous server process left in flight (those executing here are
/// left alone).
pub(super) async fn recover_all(manager: &RunManager) -> Result<()> {
    for run in manager.catalog().runs_in_flight().await? {
        if manager.is_live(run.id) {
            continue;
        }
        recover(manager, run).await;
    }
    Ok(())
}

/// Finishes a backup run a previous server process left in flight: committed if its manifest
/// reached storage, failed otherwise; its snapshots are removed either way.
pub(super) async fn recover(manager: &RunManager, mut run: Run) {
    let spec_location = run.spec.location_id();
    let is_backup = matches!(run.spec, RunSpec::Backup(_));
    let cluster = manager
        .catalog()
        .find_cluster(&run.cluster_id.to_string())
        .await
        .ok()
        .flatten();
    let location = manager
        .catalog()
        .find_location(&spec_location.to_string())
        .await
        .ok()
        .flatten();
    let mut committed = false;
    if let (Some(cluster), Some(location), Some(backup_id)) = (&cluster, &location, run.backup_id)
        && run.state != RunState::Canceling
        && !run.dry_run
        && is_backup
    {
        match stored::read_backup_manifest(
            manager.agents(),
            cluster,
            location,
            cluster.id,
            backup_id,
        )
        .await
        {
            Ok(manifest) => {
                let record = BackupRecord::from_manifest(&manifest, location);
                committed = manager.catalog().record_backup(&record).await.is_ok();
            }
            Err(Error::NotFound { .. }) => {}
            Err(error) => {
                tracing::warn!(%error, "look for the commit manifest of an interrupted run")
            }
        }
    }
    if let Some(cluster) = &cluster
        && !run.dry_run
        && is_backup
    {
        snapshot::delete_all(manager.agents(), &cluster.nodes, &run.id.to_string()).await;
    }
    let now = SystemTime::now();
    run.finish_time = Some(now);
    run.update_time = now;
    if committed {
        run.state = RunState::Succeeded;
        for node in &mut run.nodes {
            node.phase = NodePhase::Done;
        }
    } else {
        run.state = if run.state == RunState::Canceling {
            RunState::Canceled
        } else {
            RunState::Failed
        };
        if run.state == RunState::Failed {
            run.error = match run.spec {
                RunSpec::Backup(_) => "the server stopped during the run; nothing was committed".into(),
                RunSpec::Restore(_) => "the server stopped during the restore; run it again to finish (verified files are kept)".into(),
                RunSpec::Validate(_) => "the server stopped during the validation; run it again".into(),
                RunSpec::Purge(_) => "the server stopped during the purge; run it again (what it deleted was unreferenced)".into(),
            };
        }
        for node in &mut run.nodes {
            if !matches!(node.phase, NodePhase::Done | NodePhase::Failed) {
                node.phase = if run.state == RunState::Canceled {
                    NodePhase::Canceled
                } else {
                    NodePhase::Failed
                };
            }
        }
    }
    for node in &mut run.nodes {
        node.counters.rate_bytes_per_second = 0;
        node.counters.eta = None;
    }
    if matches!(run.spec, RunSpec::Validate(_) | RunSpec::Purge(_))
        && let Err(error) = manager.catalog().clear_listed_objects(run.id).await
    {
        tracing::warn!(run_id = %run.id, %error, "forget an interrupted validation's listing");
    }
    match manager.catalog().save_run(&run).await {
        Ok(()) => {
            tracing::info!(run_id = %run.id, state = run.state.as_str(), "finished interrupted run");
            manager.notifier().run_ended(&run);
        }
        Err(error) => tracing::error!(run_id = %run.id, %error, "finish interrupted run"),
    }
}
