//! Schedules with the real server and agent: fire times (daylight-saving changes included),
//! skips while a run is active, one catch-up fire after downtime, retries that survive a kill -9,
//! one run per fire across a kill, run-now, retention, pause and resume, and invalid input.
//!
//! The server's scheduler reads its time from a file the test sets (`SchedulerClock`), so a
//! test moves through days of fire times in seconds; runs and backups keep the real time.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use coffer_client::{CofferClient, proto};
use coffer_tests::{
    SchedulerClock, TestAgent, TestServer, create_fs_location, eventually, get_run, noise, tree,
    watch_to_end, wipe, write,
};
use tonic::Code;

use crate::{node, register};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

/// Milliseconds since the epoch of an RFC 3339 time.
fn utc(text: &str) -> i64 {
    let time = prost_types::Timestamp::from_str(text).expect("RFC 3339 time");
    time.seconds * 1000 + i64::from(time.nanos) / 1_000_000
}

fn ms(time: Option<&prost_types::Timestamp>) -> i64 {
    let time = time.expect("a time");
    time.seconds * 1000 + i64::from(time.nanos) / 1_000_000
}

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch");
    i64::try_from(since.as_millis()).expect("fits")
}

struct Setup {
    agent: TestAgent,
    server: TestServer,
    client: CofferClient,
    clock: SchedulerClock,
}

/// An agent with a little data, a server whose scheduler reads `clock_ms` from a file, the
/// cluster `prod` and the location `vault`.
async fn setup(root: &Path, clock_ms: i64) -> Setup {
    let agent = TestAgent::start(root, "a").await;
    write(&agent.data.join("ks/t1/data.db"), &noise(64 << 10, 1));
    write(&agent.data.join("ks/t1/index"), b"index v1\n");
    let clock = SchedulerClock::new(root, clock_ms);
    // Metrics on: the tests read the schedule fire counters.
    let mut args = clock.server_args().to_vec();
    args.extend(["--metrics-listen", "127.0.0.1:0"]);
    let server = TestServer::start_with(root, &args).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register");
    create_fs_location(&client, "vault", &root.join("vault")).await;
    Setup {
        agent,
        server,
        client,
        clock,
    }
}

fn backup_spec(kind: proto::BackupKind) -> proto::BackupSpec {
    proto::BackupSpec {
        kind: kind.into(),
        location: "vault".into(),
        ..Default::default()
    }
}

fn cron_request(name: &str, expression: &str, zone: &str) -> proto::CreateScheduleRequest {
    proto::CreateScheduleRequest {
        name: name.into(),
        cluster: "prod".into(),
        trigger: Some(proto::create_schedule_request::Trigger::Cron(
            proto::CronTrigger {
                expression: expression.into(),
                time_zone: zone.into(),
            },
        )),
        backup: Some(backup_spec(proto::BackupKind::Full)),
        ..Default::default()
    }
}

fn interval_request(name: &str, every: Duration) -> proto::CreateScheduleRequest {
    proto::CreateScheduleRequest {
        trigger: Some(proto::create_schedule_request::Trigger::Interval(
            prost_types::Duration::try_from(every).expect("duration"),
        )),
        ..cron_request(name, "", "")
    }
}

async fn create(client: &CofferClient, request: proto::CreateScheduleRequest) -> proto::Schedule {
    client
        .schedules()
        .create_schedule(request)
        .await
        .expect("create schedule")
        .into_inner()
        .schedule
        .expect("schedule")
}

async fn get(client: &CofferClient, schedule: &str) -> proto::Schedule {
    client
        .schedules()
        .get_schedule(proto::GetScheduleRequest {
            schedule: schedule.into(),
        })
        .await
        .expect("get schedule")
        .into_inner()
        .schedule
        .expect("schedule")
}

/// The schedule's fires, newest first.
async fn fires(client: &CofferClient, schedule: &str) -> Vec<proto::ScheduleFire> {
    client
        .schedules()
        .list_schedule_fires(proto::ListScheduleFiresRequest {
            schedule: schedule.into(),
            ..Default::default()
        })
        .await
        .expect("list fires")
        .into_inner()
        .fires
}

/// Waits until the schedule has fired `count` times in all; returns its fires, newest first.
async fn fired(client: &CofferClient, schedule: &str, count: usize) -> Vec<proto::ScheduleFire> {
    eventually(
        &format!("{schedule} to have fired {count} times"),
        || async {
            let fires = fires(client, schedule).await;
            assert!(fires.len() <= count, "more fires than expected: {fires:#?}");
            (fires.len() == count).then_some(fires)
        },
    )
    .await
}

/// The runs a schedule started, newest first.
async fn runs_of(client: &CofferClient, schedule_id: &str) -> Vec<proto::Run> {
    client
        .runs()
        .list_runs(proto::ListRunsRequest {
            schedule_id: schedule_id.into(),
            ..Default::default()
        })
        .await
        .expect("list runs")
        .into_inner()
        .runs
}

/// Follows the run a fire started to its end.
async fn finish(client: &CofferClient, fire: &proto::ScheduleFire) -> proto::Run {
    assert_eq!(fire.outcome(), proto::FireOutcome::Started, "{fire:?}");
    watch_to_end(client, &fire.run_id)
        .await
        .pop()
        .expect("final state")
}

/// Waits until the scheduler has handled the end of the run `fire` started (retention after a
/// success, a retry planned after a failure); returns the fire as recorded then and the
/// schedule.
async fn followed_up(
    client: &CofferClient,
    schedule: &str,
    fire: &proto::ScheduleFire,
) -> (proto::ScheduleFire, proto::Schedule) {
    let recorded = eventually(&format!("the follow-up of {}", fire.run_id), || async {
        fires(client, schedule)
            .await
            .into_iter()
            .find(|recorded| recorded.run_id == fire.run_id && recorded.follow_up_time.is_some())
    })
    .await;
    (recorded, get(client, schedule).await)
}

/// Fire times of a cron schedule follow the zone's daylight-saving rules: the next times the API
/// shows, and the fires themselves around the real changes of 2026 in Europe/Berlin. Each fire
/// starts a backup run named by the schedule, with the schedule id and fire time as its key.
#[tokio::test]
async fn cron_schedules_fire_at_their_times_across_daylight_saving_changes() {
    let root = tempfile::tempdir().expect("tempdir");
    let start = utc("2026-03-27T11:00:00Z");
    let setup = setup(root.path(), start).await;
    let client = &setup.client;

    // The fire tables, as an operator checks them before they matter.
    let table = |schedule: &proto::Schedule| -> Vec<i64> {
        schedule
            .upcoming_fire_times
            .iter()
            .map(|time| ms(Some(time)))
            .collect()
    };
    let nightly = create(
        client,
        cron_request("nightly", "30 2 * * *", "Europe/Berlin"),
    )
    .await;
    assert_eq!(
        table(&nightly),
        [
            utc("2026-03-28T01:30:00Z"), // 02:30 CET
            // 2026-03-29 02:30 does not exist in Berlin (02:00 CET -> 03:00 CEST): no fire.
            utc("2026-03-30T00:30:00Z"), // 02:30 CEST
            utc("2026-03-31T00:30:00Z"),
            utc("2026-04-01T00:30:00Z"),
            utc("2026-04-02T00:30:00Z"),
        ]
    );
    assert_eq!(ms(nightly.next_fire_time.as_ref()), table(&nightly)[0]);
    let new_york = create(
        client,
        proto::CreateScheduleRequest {
            paused: false,
            ..cron_request("new-york", "0 1-3 14 3 *", "America/New_York")
        },
    )
    .await;
    // 2027-03-14 in New York: 02:00 EST becomes 03:00 EDT; 01:00 and 03:00 fire, 02:00 not.
    assert_eq!(
        table(&new_york)[..2],
        [utc("2027-03-14T06:00:00Z"), utc("2027-03-14T07:00:00Z")]
    );
    let weekdays = create(
        client,
        cron_request("weekdays", "0 */6 * JAN-DEC MON-FRI", ""),
    )
    .await;
    // Friday 2026-03-27 12:00 and 18:00 UTC, then Monday.
    assert_eq!(
        table(&weekdays)[..3],
        [
            utc("2026-03-27T12:00:00Z"),
            utc("2026-03-27T18:00:00Z"),
            utc("2026-03-30T00:00:00Z")
        ]
    );
    for name in ["new-york", "weekdays"] {
        client
            .schedules()
            .delete_schedule(proto::DeleteScheduleRequest {
                schedule: name.into(),
            })
            .await
            .expect("delete");
    }

    // Nothing fires before the time.
    setup.clock.set(utc("2026-03-28T01:29:59Z"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fires(client, "nightly").await.is_empty());
    // 02:30 CET.
    setup.clock.set(utc("2026-03-28T01:30:00Z"));
    let first = fired(client, "nightly", 1).await;
    assert_eq!(ms(first[0].fire_time.as_ref()), utc("2026-03-28T01:30:00Z"));
    assert_eq!(first[0].cause(), proto::FireCause::Trigger);
    let run = finish(client, &first[0]).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    assert_eq!(run.schedule_id, nightly.id);
    assert_eq!(
        run.idempotency_key,
        format!("schedule:{}:{}", nightly.id, utc("2026-03-28T01:30:00Z"))
    );
    let backup = client
        .backups()
        .get_backup(proto::GetBackupRequest {
            backup_id: run.backup_id.clone(),
        })
        .await
        .expect("get backup")
        .into_inner()
        .backup
        .expect("backup");
    assert_eq!(backup.schedule_id, nightly.id);

    // The spring-forward day passes without a fire; the day after fires at 02:30 CEST.
    setup.clock.set(utc("2026-03-29T23:00:00Z"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fires(client, "nightly").await.len(), 1);
    setup.clock.set(utc("2026-03-30T00:30:00Z"));
    let second = fired(client, "nightly", 2).await;
    assert_eq!(
        ms(second[0].fire_time.as_ref()),
        utc("2026-03-30T00:30:00Z")
    );
    assert_eq!(
        second[0].missed_fires, 0,
        "the skipped local time is no missed fire"
    );
    finish(client, &second[0]).await;

    // Autumn: 02:30 occurs twice on 2026-10-25 (CEST, then CET); it fires at the first only.
    client
        .schedules()
        .update_schedule(proto::UpdateScheduleRequest {
            schedule: "nightly".into(),
            paused: Some(true),
            ..Default::default()
        })
        .await
        .expect("pause");
    setup.clock.set(utc("2026-10-24T12:00:00Z"));
    let resumed = client
        .schedules()
        .update_schedule(proto::UpdateScheduleRequest {
            schedule: "nightly".into(),
            paused: Some(false),
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner()
        .schedule
        .expect("schedule");
    assert_eq!(
        table(&resumed)[..3],
        [
            utc("2026-10-25T00:30:00Z"), // 02:30 CEST, the first of the two
            utc("2026-10-26T01:30:00Z"), // 02:30 CET
            utc("2026-10-27T01:30:00Z"),
        ]
    );
    setup.clock.set(utc("2026-10-25T00:30:00Z"));
    let third = fired(client, "nightly", 3).await;
    finish(client, &third[0]).await;
    setup.clock.set(utc("2026-10-25T01:45:00Z")); // past the second 02:30
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fires(client, "nightly").await.len(), 3, "fired once");
    assert_eq!(
        ms(get(client, "nightly").await.next_fire_time.as_ref()),
        utc("2026-10-26T01:30:00Z")
    );
    assert_eq!(runs_of(client, &nightly.id).await.len(), 3);
}

/// A fire that finds a run active on the cluster starts nothing and says which run it found; the
/// run outlasting the fire time does not make later fires disappear.
#[tokio::test]
async fn a_fire_while_a_run_is_active_is_skipped_and_later_fires_go_on() {
    let root = tempfile::tempdir().expect("tempdir");
    let start = utc("2026-06-01T00:00:00Z");
    let setup = setup(root.path(), start).await;
    let client = &setup.client;
    write(&setup.agent.data.join("ks/big"), &noise(24 << 20, 7));
    let mut request = interval_request("hourly", Duration::from_secs(3600));
    if let Some(backup) = request.backup.as_mut() {
        backup.limits = Some(proto::TransferLimits {
            rate_limit_bytes_per_second: 1 << 20,
            ..Default::default()
        });
    }
    let hourly = create(client, request).await;
    assert_eq!(ms(hourly.next_fire_time.as_ref()), start + HOUR);

    setup.clock.set(start + HOUR);
    let first = fired(client, "hourly", 1).await;
    let long_run = first[0].run_id.clone();
    // The run takes about 24 s at 1 MiB/s: the next fire time comes while it runs.
    setup.clock.set(start + 2 * HOUR);
    let skipped = fired(client, "hourly", 2).await;
    assert_eq!(skipped[0].outcome(), proto::FireOutcome::Skipped);
    assert_eq!(skipped[0].active_run_id, long_run);
    assert!(
        skipped[0].message.contains(&long_run),
        "{}",
        skipped[0].message
    );
    let schedule = get(client, "hourly").await;
    assert!(
        schedule.last_error.contains("skipped"),
        "{}",
        schedule.last_error
    );
    assert_eq!(schedule.last_run_id, long_run, "a skip keeps the last run");
    assert_eq!(
        schedule.last_fire.as_ref().map(|fire| fire.outcome()),
        Some(proto::FireOutcome::Skipped)
    );
    assert_eq!(ms(schedule.next_fire_time.as_ref()), start + 3 * HOUR);

    client
        .runs()
        .cancel_run(proto::CancelRunRequest {
            run_id: long_run.clone(),
        })
        .await
        .expect("cancel");
    let canceled = watch_to_end(client, &long_run).await.pop().expect("final");
    assert_eq!(canceled.state(), proto::RunState::Canceled);
    let (_, schedule) = followed_up(client, "hourly", &first[0]).await;
    assert!(
        schedule.last_error.contains("canceled"),
        "{}",
        schedule.last_error
    );
    assert_eq!(schedule.retry_time, None, "a canceled run is not retried");

    // The fire after the skipped one happens as usual.
    setup.clock.set(start + 3 * HOUR);
    let third = fired(client, "hourly", 3).await;
    assert_eq!(third[0].outcome(), proto::FireOutcome::Started);
    assert_eq!(ms(third[0].fire_time.as_ref()), start + 3 * HOUR);
    client
        .runs()
        .cancel_run(proto::CancelRunRequest {
            run_id: third[0].run_id.clone(),
        })
        .await
        .expect("cancel");
    watch_to_end(client, &third[0].run_id).await;
}

/// A server that was down over several fire times fires once when it is back, and the fire
/// says how many it made up for.
#[tokio::test]
async fn a_server_down_over_fire_times_fires_once_when_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let start = utc("2026-06-01T00:00:00Z");
    let setup = setup(root.path(), start).await;
    let hourly = create(
        &setup.client,
        interval_request("hourly", Duration::from_secs(3600)),
    )
    .await;
    setup.server.process.stop().await;

    // Down from 00:00 to 05:30: the fires of 01:00 to 05:00 passed.
    setup.clock.set(start + 5 * HOUR + 30 * MINUTE);
    let server = TestServer::start_with(root.path(), &setup.clock.server_args()).await;
    let client = server.client().await;
    let fires = fired(&client, "hourly", 1).await;
    assert_eq!(ms(fires[0].fire_time.as_ref()), start + 5 * HOUR);
    assert_eq!(fires[0].missed_fires, 4);
    finish(&client, &fires[0]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        runs_of(&client, &hourly.id).await.len(),
        1,
        "one catch-up run"
    );
    assert_eq!(
        ms(get(&client, "hourly").await.next_fire_time.as_ref()),
        start + 6 * HOUR
    );
}

/// A failed scheduled run is started again after the retry policy's wait; the pending retry is
/// in the catalog, so a server killed with -9 and started again keeps it, neither forgetting
/// nor repeating it.
#[tokio::test]
async fn failed_runs_are_retried_with_backoff_across_a_kill_9_of_the_server() {
    let root = tempfile::tempdir().expect("tempdir");
    let start = utc("2026-06-01T00:00:00Z");
    let setup = setup(root.path(), start).await;
    let client = &setup.client;
    let mut request = interval_request("daily", Duration::from_secs(86_400));
    request.retry = Some(proto::RetryPolicy {
        attempts: 2,
        first_wait: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        max_wait: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
    });
    let daily = create(client, request).await;
    assert_eq!(daily.retry.map(|retry| retry.attempts), Some(2));

    // The agent is gone: the run fails.
    let agent_address = setup.agent.process.host_port().to_string();
    setup.agent.process.kill().await;
    let fire_ms = start + 24 * HOUR;
    setup.clock.set(fire_ms);
    let first = fired(client, "daily", 1).await;
    let failed = finish(client, &first[0]).await;
    assert_eq!(failed.state(), proto::RunState::Failed);
    let (_, schedule) = followed_up(client, "daily", &first[0]).await;
    let retry_at = ms(schedule.retry_time.as_ref());
    // 10 minutes after the failure (by the scheduler's clock), up to a quarter earlier.
    assert!(
        (fire_ms + 7 * MINUTE + 30_000..=fire_ms + 10 * MINUTE + 1000).contains(&retry_at),
        "retry at {} min",
        (retry_at - fire_ms) as f64 / MINUTE as f64
    );
    assert!(
        schedule.last_error.contains("failed") && schedule.last_error.contains("retry 1"),
        "{}",
        schedule.last_error
    );

    // kill -9 and start again: the retry is still pending, at the same time.
    setup.server.process.kill().await;
    let mut args = setup.clock.server_args().to_vec();
    args.extend(["--metrics-listen", "127.0.0.1:0"]);
    let server = TestServer::start_with(root.path(), &args).await;
    let client = server.client().await;
    assert_eq!(
        ms(get(&client, "daily").await.retry_time.as_ref()),
        retry_at
    );
    setup.clock.set(retry_at - 1000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fires(&client, "daily").await.len(),
        1,
        "not before its time"
    );

    // The agent is back on its address; the retry starts and succeeds.
    let agent = TestAgent::start_on(root.path(), "a", &agent_address).await;
    setup.clock.set(retry_at);
    let both = fired(&client, "daily", 2).await;
    assert_eq!(both[0].cause(), proto::FireCause::Retry);
    assert_eq!(both[0].attempt, 1);
    assert_eq!(
        ms(both[0].fire_time.as_ref()),
        fire_ms,
        "a retry keeps its fire's time"
    );
    let run = finish(&client, &both[0]).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    assert_eq!(
        run.idempotency_key,
        format!("schedule:{}:{fire_ms}:retry-1", daily.id)
    );
    let (_, schedule) = followed_up(&client, "daily", &both[0]).await;
    assert_eq!(schedule.last_error, "");
    assert_eq!(schedule.retry_time, None);
    // The restarted server counted the retry's fire as a retry, and no first fire.
    let metrics = crate::metrics::metrics_address(&root.path().join("server.log")).await;
    let (_, scrape) = crate::metrics::get(&metrics, "/metrics").await;
    let fires_counted = |attempt: &str| {
        crate::metrics::sample(
            &scrape,
            &format!("coffer_schedule_fires_total{{outcome=\"started\",attempt=\"{attempt}\"}}"),
        )
    };
    assert_eq!(fires_counted("retry"), Some(1.0), "{scrape}");
    assert_eq!(fires_counted("first"), None, "{scrape}");
    // Restarting again repeats nothing.
    server.process.kill().await;
    let server = TestServer::start_with(root.path(), &setup.clock.server_args()).await;
    let client = server.client().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fires(&client, "daily").await.len(), 2);
    assert_eq!(runs_of(&client, &daily.id).await.len(), 2);
    drop(agent);
}

/// However the server is killed around a fire, the fire has one run: the fire is written as
/// pending before its run starts, and the run's idempotency key makes asking again find it.
#[tokio::test]
async fn a_fire_around_which_the_server_is_killed_starts_exactly_one_run() {
    let root = tempfile::tempdir().expect("tempdir");
    let start = utc("2026-06-01T00:00:00Z");
    let setup = setup(root.path(), start).await;
    let hourly = create(
        &setup.client,
        interval_request("hourly", Duration::from_secs(3600)),
    )
    .await;
    let mut server = setup.server;
    for hour in 1..=3 {
        let fire_ms = start + hour * HOUR;
        setup.clock.set(fire_ms);
        let client = server.client().await;
        // Kill as soon as the run exists, whether or not the fire is recorded yet.
        eventually("the fire's run", || async {
            let runs = runs_of(&client, &hourly.id).await;
            (runs.len() as i64 == hour).then_some(())
        })
        .await;
        server.process.kill().await;
        server = TestServer::start_with(root.path(), &setup.clock.server_args()).await;
        let client = server.client().await;
        let fires = fired(&client, "hourly", hour as usize).await;
        assert_eq!(ms(fires[0].fire_time.as_ref()), fire_ms);
        let runs = runs_of(&client, &hourly.id).await;
        assert_eq!(runs.len() as i64, hour, "one run per fire: {runs:#?}");
        assert_eq!(fires[0].run_id, runs[0].id);
        // Recovery finished the run the kill interrupted; wait for it before the next hour.
        eventually("the run to end", || async {
            let run = get_run(&client, &runs[0].id).await;
            matches!(
                run.state(),
                proto::RunState::Succeeded | proto::RunState::Failed | proto::RunState::Canceled
            )
            .then_some(())
        })
        .await;
    }
}

/// RunSchedule fires at once under the rules of every fire (a paused schedule too): a run
/// active on the cluster makes it FAILED_PRECONDITION and a recorded skip.
#[tokio::test]
async fn run_now_fires_at_once_under_the_same_rules() {
    let root = tempfile::tempdir().expect("tempdir");
    let start = utc("2026-06-01T00:00:00Z");
    let setup = setup(root.path(), start).await;
    let client = &setup.client;
    write(&setup.agent.data.join("ks/big"), &noise(16 << 20, 9));
    let mut request = cron_request("nightly", "30 2 * * *", "Europe/Berlin");
    request.paused = true;
    if let Some(backup) = request.backup.as_mut() {
        backup.limits = Some(proto::TransferLimits {
            rate_limit_bytes_per_second: 1 << 20,
            ..Default::default()
        });
    }
    let nightly = create(client, request).await;
    assert_eq!(nightly.next_fire_time, None, "paused");
    assert!(nightly.upcoming_fire_times.is_empty());

    let fire = client
        .schedules()
        .run_schedule(proto::RunScheduleRequest {
            schedule: "nightly".into(),
        })
        .await
        .expect("run now")
        .into_inner()
        .fire
        .expect("fire");
    assert_eq!(fire.cause(), proto::FireCause::RunNow);
    assert_eq!(fire.outcome(), proto::FireOutcome::Started);
    let fired = get_run(client, &fire.run_id).await;
    assert_eq!(fired.schedule_id, nightly.id);
    assert_eq!(fired.started_by, "schedule:nightly");

    setup.clock.set(start + 1000);
    let status = client
        .schedules()
        .run_schedule(proto::RunScheduleRequest {
            schedule: nightly.id.clone(),
        })
        .await
        .expect_err("a run is active");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains(&fire.run_id),
        "{}",
        status.message()
    );
    let recorded = fires(client, "nightly").await;
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].outcome(), proto::FireOutcome::Skipped);
    // Both fires counted in the metrics: one started, one skipped.
    let metrics = crate::metrics::metrics_address(&root.path().join("server.log")).await;
    let (_, scrape) = crate::metrics::get(&metrics, "/metrics").await;
    for outcome in ["started", "skipped"] {
        assert_eq!(
            crate::metrics::sample(
                &scrape,
                &format!("coffer_schedule_fires_total{{outcome=\"{outcome}\",attempt=\"first\"}}")
            ),
            Some(1.0),
            "{scrape}"
        );
    }
    assert_eq!(recorded[0].active_run_id, fire.run_id);
    assert_eq!(runs_of(client, &nightly.id).await.len(), 1);
    let schedule = get(client, "nightly").await;
    assert_eq!(
        schedule.next_fire_time, None,
        "run-now leaves the schedule paused"
    );
    assert_eq!(ms(schedule.last_fire_time.as_ref()), start + 1000);

    client
        .runs()
        .cancel_run(proto::CancelRunRequest {
            run_id: fire.run_id.clone(),
        })
        .await
        .expect("cancel");
    watch_to_end(client, &fire.run_id).await;
    // The run of a paused schedule is followed to its end too, and the schedule stays paused.
    let (recorded, schedule) = followed_up(client, "nightly", &fire).await;
    assert!(recorded.deleted_backup_ids.is_empty());
    assert!(schedule.paused && schedule.last_error.contains("canceled"));
}

/// Fires `schedule` now, follows its run to a success and waits for the retention after it;
/// returns the run and the backups retention deleted.
async fn run_now(client: &CofferClient, schedule: &str) -> (proto::Run, Vec<String>) {
    let fire = client
        .schedules()
        .run_schedule(proto::RunScheduleRequest {
            schedule: schedule.into(),
        })
        .await
        .expect("run now")
        .into_inner()
        .fire
        .expect("fire");
    let run = finish(client, &fire).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    let (fire, schedule) = followed_up(client, schedule, &fire).await;
    assert_eq!(schedule.last_error, "", "retention succeeded");
    (run, fire.deleted_backup_ids)
}

async fn backup_ids(client: &CofferClient) -> Vec<String> {
    client
        .backups()
        .list_backups(proto::ListBackupsRequest::default())
        .await
        .expect("list backups")
        .into_inner()
        .backups
        .into_iter()
        .map(|backup| backup.id)
        .collect()
}

/// After each backup it commits, a schedule deletes its backups that no rule keeps; deleting
/// the parent of a kept incremental backup leaves that backup restorable, byte for byte.
#[tokio::test]
async fn retention_deletes_what_no_rule_keeps_and_a_kept_incremental_restores_alone() {
    let root = tempfile::tempdir().expect("tempdir");
    let setup = setup(root.path(), now_ms()).await;
    let client = &setup.client;
    let data = setup.agent.data.clone();
    let mut request = interval_request("nightly", Duration::from_secs(86_400));
    request.backup = Some(backup_spec(proto::BackupKind::Incremental));
    request.retention = Some(proto::RetentionPolicy {
        keep_last: 2,
        ..Default::default()
    });
    create(client, request).await;
    // A backup by hand is never the schedule's to delete.
    let manual = coffer_tests::run_backup(client, "prod", "vault", proto::BackupKind::Full).await;
    assert_eq!(manual.state(), proto::RunState::Succeeded);

    let (first, deleted) = run_now(client, "nightly").await;
    assert!(deleted.is_empty());
    write(&data.join("ks/t1/index"), b"index v2\n");
    write(&data.join("ks/t2/new.db"), &noise(100 << 10, 2));
    let (second, deleted) = run_now(client, "nightly").await;
    assert!(deleted.is_empty(), "two backups: both kept");
    let kept_tree = tree(&data);
    write(&data.join("ks/t1/index"), b"index v3\n");
    std::fs::remove_file(data.join("ks/t1/data.db")).expect("remove");
    let (third, deleted) = run_now(client, "nightly").await;
    assert_eq!(deleted, std::slice::from_ref(&first.backup_id));
    // The purge retention started frees what the deleted backup held: afterwards the location
    // holds exactly what the remaining backups refer to.
    let purged = eventually("the purge after retention", || async {
        let runs = client
            .runs()
            .list_runs(proto::ListRunsRequest {
                kind: proto::RunKind::Purge.into(),
                ..Default::default()
            })
            .await
            .expect("list purges")
            .into_inner()
            .runs;
        runs.into_iter().find(|run| {
            matches!(
                run.state(),
                proto::RunState::Succeeded | proto::RunState::Failed | proto::RunState::Canceled
            )
        })
    })
    .await;
    assert_eq!(
        purged.state(),
        proto::RunState::Succeeded,
        "{}",
        purged.error_message
    );
    assert_eq!(purged.started_by, "retention:nightly");
    let freed = purged.purge_result.expect("a purge result");
    // (The first backup held nothing the others do not: the hand-made one has the same files.)
    assert_eq!(
        freed.objects_deleted, freed.objects_unreferenced,
        "{freed:?}"
    );
    let run_id = client
        .locations()
        .validate_location(proto::ValidateLocationRequest {
            location: "vault".into(),
            cluster: "prod".into(),
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner()
        .run_id;
    let checked = watch_to_end(client, &run_id)
        .await
        .pop()
        .and_then(|run| run.validation)
        .expect("a validation");
    assert_eq!(checked.objects_orphaned, 0, "{checked:?}");
    assert!(checked.backups.iter().all(|backup| backup.restorable));
    let ids = backup_ids(client).await;
    assert!(!ids.contains(&first.backup_id), "the oldest of three goes");
    for kept in [&second.backup_id, &third.backup_id, &manual.backup_id] {
        assert!(ids.contains(kept), "{kept} kept: {ids:?}");
    }
    let second_backup = client
        .backups()
        .get_backup(proto::GetBackupRequest {
            backup_id: second.backup_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .backup
        .expect("backup");
    assert_eq!(second_backup.kind(), proto::BackupKind::Incremental);
    assert!(
        second_backup.parent_backup_id == first.backup_id
            || second_backup.parent_backup_id == manual.backup_id,
        "an incremental on an earlier backup"
    );

    // The kept incremental restores alone, byte for byte, its parent deleted.
    wipe(&data);
    let restore_id = client
        .restores()
        .start_restore(proto::StartRestoreRequest {
            cluster: "prod".into(),
            restore: Some(proto::RestoreSpec {
                source: Some(proto::restore_spec::Source::BackupId(
                    second.backup_id.clone(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("start restore")
        .into_inner()
        .run_id;
    let restored = watch_to_end(client, &restore_id)
        .await
        .pop()
        .expect("final");
    assert_eq!(
        restored.state(),
        proto::RunState::Succeeded,
        "{}",
        restored.error_message
    );
    assert_eq!(tree(&data), kept_tree);

    // keep_within, by the scheduler's clock: three hours on, only the newest is within an hour.
    client
        .schedules()
        .update_schedule(proto::UpdateScheduleRequest {
            schedule: "nightly".into(),
            retention: Some(proto::RetentionPolicy {
                keep_within: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("update retention");
    let (fourth, deleted) = run_now(client, "nightly").await;
    assert!(deleted.is_empty(), "everything is within the hour yet");
    assert_eq!(backup_ids(client).await.len(), 4);
    setup.clock.set(now_ms() + 3 * HOUR);
    let (fifth, deleted) = run_now(client, "nightly").await;
    assert_eq!(deleted.len(), 3, "second, third and fourth: {deleted:?}");
    let ids = backup_ids(client).await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&fifth.backup_id) && ids.contains(&manual.backup_id));
    assert!(!ids.contains(&fourth.backup_id));
    // That retention's purge frees what only the deleted backups held (the second index).
    let purges = eventually("two purges to end", || async {
        let runs = client
            .runs()
            .list_runs(proto::ListRunsRequest {
                kind: proto::RunKind::Purge.into(),
                ..Default::default()
            })
            .await
            .expect("list purges")
            .into_inner()
            .runs;
        let ended = runs
            .iter()
            .filter(|run| run.state() == proto::RunState::Succeeded)
            .count();
        (ended >= 2).then_some(runs)
    })
    .await;
    let freed = purges[0].purge_result.expect("a purge result");
    assert!(
        freed.objects_deleted >= 1 && freed.bytes_freed > 0,
        "{freed:?}"
    );
}

/// Pausing stops fires, resuming starts again from now, a new trigger re-times; a schedule
/// whose location was deleted reports it on each fire; deleting a schedule keeps its runs.
#[tokio::test]
async fn pause_resume_update_and_delete_behave_as_the_api_says() {
    let root = tempfile::tempdir().expect("tempdir");
    let start = utc("2026-06-01T00:00:00Z");
    let setup = setup(root.path(), start).await;
    let client = &setup.client;
    create_fs_location(client, "spare", &root.path().join("spare")).await;
    let hourly = create(
        client,
        interval_request("hourly", Duration::from_secs(3600)),
    )
    .await;

    let paused = client
        .schedules()
        .update_schedule(proto::UpdateScheduleRequest {
            schedule: "hourly".into(),
            paused: Some(true),
            ..Default::default()
        })
        .await
        .expect("pause")
        .into_inner()
        .schedule
        .expect("schedule");
    assert!(paused.paused && paused.next_fire_time.is_none());
    setup.clock.set(start + 5 * HOUR);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        fires(client, "hourly").await.is_empty(),
        "a paused schedule does not fire"
    );
    let resumed = client
        .schedules()
        .update_schedule(proto::UpdateScheduleRequest {
            schedule: "hourly".into(),
            paused: Some(false),
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner()
        .schedule
        .expect("schedule");
    assert_eq!(
        ms(resumed.next_fire_time.as_ref()),
        start + 6 * HOUR,
        "from now"
    );
    // The metrics show the resumed schedule's next fire (read again every 5 s).
    let metrics = crate::metrics::metrics_address(&root.path().join("server.log")).await;
    let next = (start + 6 * HOUR) as f64 / 1000.0;
    eventually("the next fire in the metrics", || async {
        let (_, scrape) = crate::metrics::get(&metrics, "/metrics").await;
        (crate::metrics::sample(
            &scrape,
            "coffer_schedule_next_fire_timestamp_seconds{schedule=\"hourly\"}",
        ) == Some(next))
        .then_some(())
    })
    .await;
    assert!(
        fires(client, "hourly").await.is_empty(),
        "resuming owes no fire"
    );

    // A new trigger, name and location in one change.
    let changed = client
        .schedules()
        .update_schedule(proto::UpdateScheduleRequest {
            schedule: hourly.id.clone(),
            name: Some("every-two-hours".into()),
            trigger: Some(proto::update_schedule_request::Trigger::Interval(
                prost_types::Duration {
                    seconds: 7200,
                    nanos: 0,
                },
            )),
            backup: Some(proto::BackupSpec {
                location: "spare".into(),
                ..backup_spec(proto::BackupKind::Full)
            }),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .schedule
        .expect("schedule");
    assert_eq!(changed.name, "every-two-hours");
    assert_eq!(changed.location_name, "spare");
    assert_eq!(ms(changed.next_fire_time.as_ref()), start + 7 * HOUR);
    assert!(ms(changed.update_time.as_ref()) >= ms(hourly.update_time.as_ref()));

    // The location goes: every fire says so.
    client
        .locations()
        .delete_location(proto::DeleteLocationRequest {
            location: "spare".into(),
        })
        .await
        .expect("delete location");
    setup.clock.set(start + 7 * HOUR);
    let failed = fired(client, "every-two-hours", 1).await;
    assert_eq!(failed[0].outcome(), proto::FireOutcome::Failed);
    assert!(
        failed[0].message.contains("location"),
        "{}",
        failed[0].message
    );
    let orphaned = get(client, &hourly.id).await;
    assert!(
        orphaned.last_error.contains("deleted"),
        "the schedule's error names it: {}",
        orphaned.last_error
    );
    assert_eq!(orphaned.location_name, "", "the location is gone");
    let status = client
        .schedules()
        .run_schedule(proto::RunScheduleRequest {
            schedule: "every-two-hours".into(),
        })
        .await
        .expect_err("no location");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("location"),
        "{}",
        status.message()
    );

    // Back on a location that exists; one run, then the schedule is deleted and its run stays.
    client
        .schedules()
        .update_schedule(proto::UpdateScheduleRequest {
            schedule: "every-two-hours".into(),
            backup: Some(backup_spec(proto::BackupKind::Full)),
            ..Default::default()
        })
        .await
        .expect("update location");
    let (run, _) = run_now(client, "every-two-hours").await;
    client
        .schedules()
        .delete_schedule(proto::DeleteScheduleRequest {
            schedule: "every-two-hours".into(),
        })
        .await
        .expect("delete");
    for status in [
        client
            .schedules()
            .get_schedule(proto::GetScheduleRequest {
                schedule: hourly.id.clone(),
            })
            .await
            .expect_err("deleted"),
        client
            .schedules()
            .delete_schedule(proto::DeleteScheduleRequest {
                schedule: hourly.id.clone(),
            })
            .await
            .expect_err("deleted"),
    ] {
        assert_eq!(status.code(), Code::NotFound);
    }
    let runs = runs_of(client, &hourly.id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, run.id);

    // A schedule outlives its cluster, and says so when it fires.
    create(
        client,
        interval_request("orphan", Duration::from_secs(3600)),
    )
    .await;
    client
        .clusters()
        .delete_cluster(proto::DeleteClusterRequest {
            cluster: "prod".into(),
        })
        .await
        .expect("delete cluster");
    let orphan = get(client, "orphan").await;
    assert_eq!(orphan.cluster_name, "");
    let status = client
        .schedules()
        .run_schedule(proto::RunScheduleRequest {
            schedule: "orphan".into(),
        })
        .await
        .expect_err("no cluster");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("cluster") && status.message().contains("deleted"),
        "{}",
        status.message()
    );
}

/// Every field of every request is checked: INVALID_ARGUMENT naming the field, NOT_FOUND for
/// unknown references, ALREADY_EXISTS for a taken name.
#[tokio::test]
async fn invalid_schedule_input_is_refused_naming_the_field() {
    let root = tempfile::tempdir().expect("tempdir");
    let setup = setup(root.path(), now_ms()).await;
    let client = &setup.client;
    create(client, cron_request("nightly", "30 2 * * *", "")).await;

    let interval = |seconds: i64| {
        Some(proto::create_schedule_request::Trigger::Interval(
            prost_types::Duration { seconds, nanos: 0 },
        ))
    };
    let base = cron_request("other", "30 2 * * *", "");
    let with_backup = |change: fn(&mut proto::BackupSpec)| {
        let mut request = base.clone();
        if let Some(backup) = request.backup.as_mut() {
            change(backup);
        }
        request
    };
    let cases: Vec<(proto::CreateScheduleRequest, Code, &str)> = vec![
        (
            proto::CreateScheduleRequest {
                name: "".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "name",
        ),
        (
            proto::CreateScheduleRequest {
                name: "Nightly".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "name",
        ),
        (
            proto::CreateScheduleRequest {
                name: "nightly".into(),
                ..base.clone()
            },
            Code::AlreadyExists,
            "nightly",
        ),
        (
            proto::CreateScheduleRequest {
                cluster: "".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "cluster",
        ),
        (
            proto::CreateScheduleRequest {
                cluster: "staging".into(),
                ..base.clone()
            },
            Code::NotFound,
            "staging",
        ),
        (
            proto::CreateScheduleRequest {
                trigger: None,
                ..base.clone()
            },
            Code::InvalidArgument,
            "trigger",
        ),
        (
            cron_request("other", "30 2 * *", ""),
            Code::InvalidArgument,
            "cron.expression",
        ),
        (
            cron_request("other", "0 30 2 * * *", ""),
            Code::InvalidArgument,
            "cron.expression",
        ),
        (
            cron_request("other", "61 2 * * *", ""),
            Code::InvalidArgument,
            "cron.expression",
        ),
        (
            cron_request("other", "0 0 30 2 *", ""),
            Code::InvalidArgument,
            "cron.expression",
        ),
        (
            cron_request("other", "30 2 * * *", "Mars/Olympus"),
            Code::InvalidArgument,
            "cron.time_zone",
        ),
        (
            proto::CreateScheduleRequest {
                trigger: interval(59),
                ..base.clone()
            },
            Code::InvalidArgument,
            "interval",
        ),
        (
            proto::CreateScheduleRequest {
                trigger: interval(-60),
                ..base.clone()
            },
            Code::InvalidArgument,
            "interval",
        ),
        (
            proto::CreateScheduleRequest {
                backup: None,
                ..base.clone()
            },
            Code::InvalidArgument,
            "backup",
        ),
        (
            with_backup(|backup| backup.location = String::new()),
            Code::InvalidArgument,
            "backup.location",
        ),
        (
            with_backup(|backup| backup.location = "nowhere".into()),
            Code::NotFound,
            "nowhere",
        ),
        (
            with_backup(|backup| backup.kind = 9),
            Code::InvalidArgument,
            "backup.kind",
        ),
        (
            with_backup(|backup| {
                backup.filter = Some(proto::PathFilter {
                    include: vec!["[".into()],
                    exclude: vec![],
                })
            }),
            Code::InvalidArgument,
            "backup.filter",
        ),
        (
            with_backup(|backup| {
                backup.limits = Some(proto::TransferLimits {
                    concurrency: -1,
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "backup.limits.concurrency",
        ),
        (
            with_backup(|backup| {
                backup.labels = [("Bad Key".to_string(), "v".to_string())].into();
            }),
            Code::InvalidArgument,
            "backup.labels",
        ),
        (
            proto::CreateScheduleRequest {
                retention: Some(proto::RetentionPolicy {
                    keep_within: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..base.clone()
            },
            Code::InvalidArgument,
            "retention.keep_within",
        ),
        (
            proto::CreateScheduleRequest {
                retention: Some(proto::RetentionPolicy {
                    keep_daily: 1_000_000,
                    ..Default::default()
                }),
                ..base.clone()
            },
            Code::InvalidArgument,
            "retention.keep_daily",
        ),
        (
            proto::CreateScheduleRequest {
                retry: Some(proto::RetryPolicy {
                    attempts: 21,
                    ..Default::default()
                }),
                ..base.clone()
            },
            Code::InvalidArgument,
            "retry.attempts",
        ),
        (
            proto::CreateScheduleRequest {
                retry: Some(proto::RetryPolicy {
                    attempts: 1,
                    first_wait: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 1000,
                    }),
                    max_wait: None,
                }),
                ..base.clone()
            },
            Code::InvalidArgument,
            "retry.first_wait",
        ),
        (
            proto::CreateScheduleRequest {
                retry: Some(proto::RetryPolicy {
                    attempts: 1,
                    first_wait: Some(prost_types::Duration {
                        seconds: 600,
                        nanos: 0,
                    }),
                    max_wait: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                }),
                ..base.clone()
            },
            Code::InvalidArgument,
            "retry.max_wait",
        ),
    ];
    for (request, code, named) in cases {
        let status = client
            .schedules()
            .create_schedule(request.clone())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{request:?}: {}", status.message());
        assert!(
            status.message().contains(named),
            "{named} in {:?}",
            status.message()
        );
    }

    let update = |request: proto::UpdateScheduleRequest| async move {
        client
            .schedules()
            .update_schedule(request)
            .await
            .expect_err("refused")
    };
    create(client, cron_request("second", "0 3 * * *", "")).await;
    for (request, code, named) in [
        (
            proto::UpdateScheduleRequest {
                schedule: "".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "schedule",
        ),
        (
            proto::UpdateScheduleRequest {
                schedule: "ghost".into(),
                paused: Some(true),
                ..Default::default()
            },
            Code::NotFound,
            "ghost",
        ),
        (
            proto::UpdateScheduleRequest {
                schedule: "second".into(),
                name: Some("nightly".into()),
                paused: Some(true),
                ..Default::default()
            },
            Code::AlreadyExists,
            "nightly",
        ),
        (
            proto::UpdateScheduleRequest {
                schedule: "second".into(),
                trigger: Some(proto::update_schedule_request::Trigger::Cron(
                    proto::CronTrigger {
                        expression: "L * * * *".into(),
                        time_zone: "".into(),
                    },
                )),
                ..Default::default()
            },
            Code::InvalidArgument,
            "cron.expression",
        ),
        (
            proto::UpdateScheduleRequest {
                schedule: "second".into(),
                backup: Some(proto::BackupSpec {
                    location: "nowhere".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Code::NotFound,
            "nowhere",
        ),
    ] {
        let status = update(request).await;
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(named),
            "{named}: {}",
            status.message()
        );
    }
    // A refused update changed nothing.
    let second = get(client, "second").await;
    assert!(!second.paused && second.name == "second");

    let status = client
        .schedules()
        .list_schedules(proto::ListSchedulesRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("page_token"),
        "{}",
        status.message()
    );
    let status = client
        .schedules()
        .list_schedules(proto::ListSchedulesRequest {
            cluster: "staging".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown cluster");
    assert_eq!(status.code(), Code::NotFound);
    let listed = client
        .schedules()
        .list_schedules(proto::ListSchedulesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.schedules.len(), 1);
    assert_eq!(listed.schedules[0].name, "nightly");
    let rest = client
        .schedules()
        .list_schedules(proto::ListSchedulesRequest {
            page_size: 1,
            page_token: listed.next_page_token,
            cluster: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rest.schedules[0].name, "second");
    assert!(rest.next_page_token.is_empty());

    for status in [
        client
            .schedules()
            .run_schedule(proto::RunScheduleRequest {
                schedule: "ghost".into(),
            })
            .await
            .expect_err("unknown"),
        client
            .schedules()
            .list_schedule_fires(proto::ListScheduleFiresRequest {
                schedule: "ghost".into(),
                ..Default::default()
            })
            .await
            .expect_err("unknown"),
    ] {
        assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    }
    let status = client
        .runs()
        .list_runs(proto::ListRunsRequest {
            schedule_id: "nightly".into(),
            ..Default::default()
        })
        .await
        .expect_err("not an id");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("schedule_id"),
        "{}",
        status.message()
    );
}

/// A deletion retention cannot make is named on the schedule, and made at the next pass: the
/// commit manifest of the backup to delete is made undeletable (a folder that is not empty
/// where the file was) while the next backup commits, then put back before the one after.
#[tokio::test]
async fn a_deletion_retention_could_not_make_is_reported_and_made_at_the_next_pass() {
    let root = tempfile::tempdir().expect("tempdir");
    let setup = setup(root.path(), now_ms()).await;
    let client = &setup.client;
    let mut request = cron_request("nightly", "30 2 * * *", "");
    request.retention = Some(proto::RetentionPolicy {
        keep_last: 1,
        ..Default::default()
    });
    let nightly = create(client, request).await;
    let (first, _) = run_now(client, "nightly").await;
    let manifest = root
        .path()
        .join("vault/clusters")
        .join(&nightly.cluster_id)
        .join("backups")
        .join(&first.backup_id)
        .join("backup.json");
    let aside = manifest.with_extension("json.aside");
    std::fs::rename(&manifest, &aside).expect("move the manifest aside");
    write(&manifest.join("in-the-way"), b"not a manifest\n");

    setup.clock.set(now_ms());
    let fire = client
        .schedules()
        .run_schedule(proto::RunScheduleRequest {
            schedule: "nightly".into(),
        })
        .await
        .expect("run now")
        .into_inner()
        .fire
        .expect("fire");
    let second = finish(client, &fire).await;
    assert_eq!(
        second.state(),
        proto::RunState::Succeeded,
        "{}",
        second.error_message
    );
    let (recorded, schedule) = followed_up(client, "nightly", &fire).await;
    assert!(recorded.deleted_backup_ids.is_empty());
    assert!(
        schedule
            .last_error
            .contains("retention could not delete 1 of 1 backups")
            && schedule.last_error.contains(&first.backup_id),
        "{}",
        schedule.last_error
    );
    assert!(
        backup_ids(client).await.contains(&first.backup_id),
        "still listed"
    );

    // Put back: the next pass deletes both it and the second.
    std::fs::remove_dir_all(&manifest).expect("clear the way");
    std::fs::rename(&aside, &manifest).expect("put the manifest back");
    setup.clock.set(now_ms());
    let (third, deleted) = run_now(client, "nightly").await;
    let mut deleted = deleted;
    deleted.sort();
    let mut expected = vec![first.backup_id.clone(), second.backup_id.clone()];
    expected.sort();
    assert_eq!(deleted, expected);
    assert_eq!(backup_ids(client).await, [third.backup_id]);
    assert!(!manifest.exists(), "the manifest went with it");
}

/// A schedule with a validation starts one after each backup it makes, as asked (deep, all
/// objects); the validation can be changed and removed; both at once is refused.
#[tokio::test]
async fn a_schedule_validates_after_each_backup() {
    let root = tempfile::tempdir().expect("tempdir");
    let setup = setup(root.path(), utc("2026-06-01T00:00:00Z")).await;
    let client = &setup.client;
    let mut request = cron_request("nightly", "30 2 * * *", "UTC");
    request.validation = Some(proto::ScheduleValidation {
        depth: proto::ValidationDepth::Deep.into(),
        sample_percent: 0,
    });
    let created = create(client, request).await;
    let validation = created.validation.expect("a validation");
    assert_eq!(validation.depth(), proto::ValidationDepth::Deep);
    assert_eq!(validation.sample_percent, 100, "0 means all");

    let (backup, _) = run_now(client, "nightly").await;
    let validated = eventually("the validation after the backup", || async {
        client
            .runs()
            .list_runs(proto::ListRunsRequest {
                kind: proto::RunKind::Validate.into(),
                ..Default::default()
            })
            .await
            .expect("list validations")
            .into_inner()
            .runs
            .into_iter()
            .find(|run| run.finish_time.is_some())
    })
    .await;
    assert_eq!(
        validated.state(),
        proto::RunState::Succeeded,
        "{}",
        validated.error_message
    );
    assert_eq!(validated.started_by, "schedule:nightly");
    match &validated.spec {
        Some(proto::run::Spec::Validate(spec)) => {
            assert_eq!(spec.depth(), proto::ValidationDepth::Deep);
            assert_eq!(spec.sample_percent, 100);
        }
        other => panic!("not a validate spec: {other:?}"),
    }
    let result = validated.validation.expect("a result");
    assert_eq!(result.backups.len(), 1);
    assert_eq!(result.backups[0].backup_id, backup.backup_id);
    assert!(result.backups[0].restorable);
    assert_eq!(result.objects_verified, result.objects_referenced);
    assert_eq!(result.objects_never_verified, 0);

    let both = client
        .schedules()
        .update_schedule(proto::UpdateScheduleRequest {
            schedule: "nightly".into(),
            validation: Some(proto::ScheduleValidation::default()),
            remove_validation: true,
            ..Default::default()
        })
        .await
        .expect_err("both");
    assert_eq!(both.code(), Code::InvalidArgument);
    let sampled = client
        .schedules()
        .update_schedule(proto::UpdateScheduleRequest {
            schedule: "nightly".into(),
            validation: Some(proto::ScheduleValidation {
                depth: proto::ValidationDepth::Deep.into(),
                sample_percent: 5,
            }),
            ..Default::default()
        })
        .await
        .expect("sample")
        .into_inner()
        .schedule
        .expect("schedule");
    assert_eq!(sampled.validation.map(|v| v.sample_percent), Some(5));
    let removed = client
        .schedules()
        .update_schedule(proto::UpdateScheduleRequest {
            schedule: "nightly".into(),
            remove_validation: true,
            ..Default::default()
        })
        .await
        .expect("remove")
        .into_inner()
        .schedule
        .expect("schedule");
    assert_eq!(removed.validation, None);
    assert_eq!(
        get(client, "nightly").await.retention,
        created.retention,
        "the rest unchanged"
    );
}
