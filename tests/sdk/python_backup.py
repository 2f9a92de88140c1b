"""A backup through a Python client generated from proto/, as a user of the API would write it.

Generate the client first, then run this with the generated folder on PYTHONPATH:

    python -m grpc_tools.protoc -I proto --python_out=OUT --grpc_python_out=OUT proto/coffer/v1/*.proto
    PYTHONPATH=OUT python tests/sdk/python_backup.py SERVER AGENT LOCATION_DIR --expect-files N

It registers a cluster with the one agent, creates a filesystem location at LOCATION_DIR, starts a
full backup, follows RunService.WatchRun to the end (printing each state as `state RUN_STATE_...`),
then reads the backup with GetBackup. Then it creates a schedule of incremental backups (02:30
in Europe/Berlin, keeping the last three), prints its next fire times, fires it with RunSchedule
and follows that run to its end too (`schedule-state RUN_STATE_...`). It exits 0 only if both
runs SUCCEEDED, the backup holds the expected number of files and the scheduled run names its
schedule. The end-to-end test tests/e2e/sdk_python.rs runs it.

Every call presents the bearer token in COFFER_TOKEN (`authorization: Bearer ...`), added by a
client interceptor, as any program talking to a server with tokens on does.
"""

import argparse
import collections
import os
import sys

import grpc

from coffer.v1 import backup_pb2, backup_pb2_grpc
from coffer.v1 import cluster_pb2, cluster_pb2_grpc
from coffer.v1 import location_pb2, location_pb2_grpc
from coffer.v1 import run_pb2, run_pb2_grpc
from coffer.v1 import schedule_pb2, schedule_pb2_grpc


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


def watch(runs, run_id, prefix):
    """Follows a run with WatchRun to its end, printing each state; returns the last run."""
    last = None
    for message in runs.WatchRun(run_pb2.WatchRunRequest(run_id=run_id), timeout=120):
        last = message.run
        print(f"{prefix} {run_pb2.RunState.Name(last.state)}", flush=True)
    return last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", help="the Coffer server, host:port")
    parser.add_argument("agent", help="the node agent's address, host:port or http://host:port")
    parser.add_argument("location", help="absolute path of the backup location's folder")
    parser.add_argument("--expect-files", type=int, required=True, help="files the backup must hold")
    parser.add_argument("--cluster", default="py-sdk", help="name of the cluster to register")
    args = parser.parse_args()

    token = os.environ.get("COFFER_TOKEN")
    with grpc.insecure_channel(args.server) as plain:
        channel = grpc.intercept_channel(plain, BearerToken(token)) if token else plain
        clusters = cluster_pb2_grpc.ClusterServiceStub(channel)
        locations = location_pb2_grpc.LocationServiceStub(channel)
        backups = backup_pb2_grpc.BackupServiceStub(channel)
        runs = run_pb2_grpc.RunServiceStub(channel)

        cluster = clusters.RegisterCluster(
            cluster_pb2.RegisterClusterRequest(
                name=args.cluster,
                nodes=[cluster_pb2.NodeSpec(address=args.agent, datacenter="dc1")],
            ),
            timeout=30,
        ).cluster
        print(f"cluster {cluster.name} {cluster.id} nodes {len(cluster.nodes)}")

        location = locations.CreateLocation(
            location_pb2.CreateLocationRequest(
                name=f"{args.cluster}-fs",
                fs=location_pb2.FsLocationOptions(path=args.location),
            ),
            timeout=30,
        ).location
        print(f"location {location.name} {location.id}")

        run_id = backups.StartBackup(
            backup_pb2.StartBackupRequest(
                cluster=cluster.id,
                backup=backup_pb2.BackupSpec(
                    kind=backup_pb2.BACKUP_KIND_FULL, location=location.id
                ),
            ),
            timeout=30,
        ).run_id
        print(f"run {run_id}")

        last = watch(runs, run_id, "state")
        if last is None:
            print("error: WatchRun ended without a message", file=sys.stderr)
            return 1
        if last.state != run_pb2.RUN_STATE_SUCCEEDED:
            print(f"error: run ended {run_pb2.RunState.Name(last.state)}: {last.error_message}",
                  file=sys.stderr)
            return 1

        backup = backups.GetBackup(
            backup_pb2.GetBackupRequest(backup_id=last.backup_id), timeout=30
        ).backup
        print(f"backup {backup.id} kind {backup_pb2.BackupKind.Name(backup.kind)} "
              f"files {backup.totals.file_count} bytes {backup.totals.total_bytes}")
        if backup.totals.file_count != args.expect_files:
            print(f"error: backup holds {backup.totals.file_count} files, "
                  f"expected {args.expect_files}", file=sys.stderr)
            return 1

        schedules = schedule_pb2_grpc.ScheduleServiceStub(channel)
        schedule = schedules.CreateSchedule(
            schedule_pb2.CreateScheduleRequest(
                name=f"{args.cluster}-nightly",
                cluster=cluster.id,
                cron=schedule_pb2.CronTrigger(expression="30 2 * * *", time_zone="Europe/Berlin"),
                backup=backup_pb2.BackupSpec(
                    kind=backup_pb2.BACKUP_KIND_INCREMENTAL, location=location.id
                ),
                retention=schedule_pb2.RetentionPolicy(keep_last=3),
            ),
            timeout=30,
        ).schedule
        print(f"schedule {schedule.name} {schedule.id}")
        for time in schedule.upcoming_fire_times:
            print(f"upcoming {time.ToJsonString()}")
        fire = schedules.RunSchedule(
            schedule_pb2.RunScheduleRequest(schedule=schedule.name), timeout=30
        ).fire
        print(f"fired {schedule_pb2.FireOutcome.Name(fire.outcome)} run {fire.run_id}")
        scheduled = watch(runs, fire.run_id, "schedule-state")
        if scheduled is None or scheduled.state != run_pb2.RUN_STATE_SUCCEEDED:
            print(f"error: the scheduled run did not succeed: {scheduled}", file=sys.stderr)
            return 1
        if scheduled.schedule_id != schedule.id:
            print(f"error: the run names schedule {scheduled.schedule_id!r}", file=sys.stderr)
            return 1
        fires = schedules.ListScheduleFires(
            schedule_pb2.ListScheduleFiresRequest(schedule=schedule.id), timeout=30
        ).fires
        print(f"fires {len(fires)} first {schedule_pb2.FireCause.Name(fires[0].cause)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        sys.exit(1)
