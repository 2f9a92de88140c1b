//! A cluster's description in a location (`clusters/<id>/cluster.json`): its name, labels and
//! nodes and the schedules that back it up there, written after each backup it commits, so a
//! catalog rebuilt from the location gets back all of it (see [`super::import`]).

use std::time::{Duration, SystemTime};

use coffer_format::description::{
    CLUSTER_DESCRIPTION_FORMAT, CLUSTER_DESCRIPTION_VERSION, ClusterDescription, DescribedNode,
    DescribedSchedule, DescribedValidation,
};

use crate::agents::{AgentClients, storage};
use crate::catalog::Catalog;
use crate::error::Result;
use crate::model::Cluster;
use crate::model::location::Location;
use crate::model::schedule::{Schedule, Trigger};
use crate::model::validation::Depth;

/// Most schedules listed at once while describing a cluster.
const SCHEDULE_PAGE: u32 = 500;

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A schedule as a description keeps it.
pub fn describe_schedule(schedule: &Schedule) -> DescribedSchedule {
    let (cron_expression, time_zone, interval_ms) = match &schedule.trigger {
        Trigger::Cron(cron) => (
            Some(cron.expression().to_string()),
            cron.time_zone().to_string(),
            None,
        ),
        Trigger::Interval(interval) => (None, String::new(), Some(ms(*interval))),
    };
    let backup = &schedule.backup;
    DescribedSchedule {
        schedule_id: schedule.id,
        name: schedule.name.to_string(),
        cron_expression,
        time_zone,
        interval_ms,
        kind: backup.kind,
        filter: backup.filter.clone(),
        rate_limit_bytes_per_second: backup.limits.rate_limit_bytes_per_second,
        concurrency: backup.limits.concurrency,
        node_parallelism: backup.limits.node_parallelism,
        labels: backup.labels.clone(),
        keep_last: schedule.retention.keep_last,
        keep_within_ms: schedule.retention.keep_within.map(ms),
        keep_daily: schedule.retention.keep_daily,
        keep_weekly: schedule.retention.keep_weekly,
        keep_monthly: schedule.retention.keep_monthly,
        retry_attempts: schedule.retry.attempts,
        retry_first_wait_ms: ms(schedule.retry.first_wait),
        retry_max_wait_ms: ms(schedule.retry.max_wait),
        validation: schedule.validation.map(|thoroughness| DescribedValidation {
            depth: match thoroughness.depth {
                Depth::Quick => "quick".into(),
                Depth::Deep => "deep".into(),
            },
            sample_percent: thoroughness.sample_percent,
        }),
        paused: schedule.paused,
    }
}

/// The description of `cluster` for `location`, from the catalog as it is now.
pub async fn description(
    catalog: &Catalog,
    cluster: &Cluster,
    location: &Location,
) -> Result<ClusterDescription> {
    let mut schedules = Vec::new();
    let mut after = None;
    loop {
        let (page, more) = catalog
            .list_schedules(SCHEDULE_PAGE, after.as_ref(), Some(cluster.id))
            .await?;
        after = page.last().map(|schedule| schedule.name.clone());
        schedules.extend(
            page.iter()
                .filter(|schedule| schedule.backup.location_id == location.id)
                .map(describe_schedule),
        );
        if !more {
            break;
        }
    }
    Ok(ClusterDescription {
        format: CLUSTER_DESCRIPTION_FORMAT.into(),
        version: CLUSTER_DESCRIPTION_VERSION,
        cluster_id: cluster.id,
        name: cluster.name.to_string(),
        labels: cluster.labels.as_map().clone(),
        nodes: cluster
            .nodes
            .iter()
            .map(|node| DescribedNode {
                node_id: node.info.node_id,
                address: node.spec.address.as_str().to_string(),
                datacenter: node.spec.datacenter.clone(),
                rack: node.spec.rack.clone(),
                hostname: node.info.hostname.clone(),
            })
            .collect(),
        schedules,
        write_time: coffer_format::manifest::format_time(SystemTime::now()),
    })
}

/// Writes the description of `cluster` into `location`, through one of its agents.
pub async fn write_description(
    catalog: &Catalog,
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
) -> Result<()> {
    let description = description(catalog, cluster, location).await?;
    let path = coffer_format::ClusterLayout::new(cluster.id).description();
    storage::put_object(agents, cluster, location, &path, description.encode()).await
}
