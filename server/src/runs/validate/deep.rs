//! The deep pass of a validation: the objects the run chose are downloaded by the cluster's
//! agents and their BLAKE3 verified, a batch per agent at a time, spread over the nodes.

use std::collections::HashMap;
use std::time::SystemTime;

use super::{ValidatePlan, update};
use crate::agents::storage::{self, ObjectCondition};
use crate::error::{Error, Result};
use crate::runs::RunHandle;

/// Objects one agent verifies per call.
const BATCH: u32 = 256;
/// Batches verified at once (each by another node, when the cluster has that many).
const MAX_PARALLEL_BATCHES: usize = 4;

/// Verifies the objects the run chose; records each intact one as verified now and each
/// damaged one as damaged. Returns how many were found damaged.
pub(super) async fn verify(handle: &mut RunHandle, plan: &ValidatePlan) -> Result<u64> {
    let run_id = handle.run().id;
    let cancel = handle.cancelled();
    let agents = handle.manager().agents().clone();
    let catalog = handle.manager().catalog().clone();
    let parallel = plan.cluster.nodes.len().clamp(1, MAX_PARALLEL_BATCHES);
    let (mut verified, mut bytes, mut damaged_total) = (0u64, 0u64, 0u64);
    let mut after = String::new();
    let mut next_agent = 0usize;
    loop {
        if cancel.is_cancelled() {
            return Err(Error::Canceled);
        }
        let mut batches = Vec::with_capacity(parallel);
        let mut stored_sizes: HashMap<String, u64> = HashMap::new();
        for _ in 0..parallel {
            let page = catalog.objects_to_verify(run_id, &after, BATCH).await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = last.clone();
            batches.push(
                page.iter()
                    .map(|(hash, _)| hash.clone())
                    .collect::<Vec<_>>(),
            );
            stored_sizes.extend(page);
        }
        if batches.is_empty() {
            return Ok(damaged_total);
        }
        let first_agent = next_agent;
        let calls = batches.iter().enumerate().map(|(index, batch)| {
            storage::verify_objects(
                &agents,
                &plan.cluster,
                &plan.location,
                first_agent + index,
                batch,
            )
        });
        next_agent += batches.len();
        let answers = tokio::select! {
            answers = futures::future::try_join_all(calls) => answers?,
            () = cancel.cancelled() => return Err(Error::Canceled),
        };
        let mut intact = Vec::new();
        let mut damaged = Vec::new();
        for answer in answers.into_iter().flatten() {
            // What was read of a damaged object is not reported: count the listed size.
            bytes += stored_sizes
                .get(&answer.hash)
                .copied()
                .unwrap_or(answer.stored_bytes);
            verified += 1;
            match answer.condition {
                ObjectCondition::Intact => intact.push(answer.hash),
                ObjectCondition::Missing => damaged.push((
                    answer.hash,
                    "gone when verified (deleted since the listing)".to_string(),
                )),
                ObjectCondition::Damaged(reason) => damaged.push((answer.hash, reason)),
            }
        }
        damaged_total += damaged.len() as u64;
        catalog
            .record_verified(
                run_id,
                plan.cluster.id,
                plan.location.id,
                &intact,
                &damaged,
                now_ms(),
            )
            .await?;
        let damaged_now = damaged_total;
        handle
            .progress(|run| {
                update(run, |result| {
                    result.objects_verified = verified;
                    result.bytes_verified = bytes;
                    result.objects_damaged = damaged_now;
                });
            })
            .await;
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
