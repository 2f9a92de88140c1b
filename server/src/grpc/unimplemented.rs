//! Services of the API that later versions implement. Every RPC answers UNIMPLEMENTED with a
//! message saying so, rather than the bare "method not found" of an unregistered service, and
//! the services are registered so reflection and health list the whole API.

use std::pin::Pin;

use coffer_proto::v1 as proto;
use futures::Stream;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};

use crate::error::Error;

/// Answers every RPC of the services it implements with UNIMPLEMENTED.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotYetImplementedHandler;

fn not_yet(method: &str) -> Status {
    Error::Unimplemented(format!(
        "{method} is part of the coffer.v1 API but not implemented by coffer-server {} yet",
        env!("CARGO_PKG_VERSION")
    ))
    .into()
}

/// Implements the listed unary RPCs of a service trait as "not yet implemented".
macro_rules! not_yet_implemented {
    ($service:path, $name:literal, { $($method:ident($request:ident) -> $response:ident as $rpc:literal;)* } $($extra:tt)*) => {
        #[tonic::async_trait]
        impl $service for NotYetImplementedHandler {
            $(
                async fn $method(
                    &self,
                    _request: Request<proto::$request>,
                ) -> Result<Response<proto::$response>, Status> {
                    Err(not_yet(concat!("coffer.v1.", $name, "/", $rpc)))
                }
            )*
            $($extra)*
        }
    };
}

not_yet_implemented!(proto::location_service_server::LocationService, "LocationService", {
    create_location(CreateLocationRequest) -> CreateLocationResponse as "CreateLocation";
    get_location(GetLocationRequest) -> GetLocationResponse as "GetLocation";
    list_locations(ListLocationsRequest) -> ListLocationsResponse as "ListLocations";
    update_location(UpdateLocationRequest) -> UpdateLocationResponse as "UpdateLocation";
    delete_location(DeleteLocationRequest) -> DeleteLocationResponse as "DeleteLocation";
    check_location(CheckLocationRequest) -> CheckLocationResponse as "CheckLocation";
});

not_yet_implemented!(proto::backup_service_server::BackupService, "BackupService", {
    start_backup(StartBackupRequest) -> StartBackupResponse as "StartBackup";
    list_backups(ListBackupsRequest) -> ListBackupsResponse as "ListBackups";
    get_backup(GetBackupRequest) -> GetBackupResponse as "GetBackup";
    list_backup_files(ListBackupFilesRequest) -> ListBackupFilesResponse as "ListBackupFiles";
    delete_backup(DeleteBackupRequest) -> DeleteBackupResponse as "DeleteBackup";
});

not_yet_implemented!(proto::restore_service_server::RestoreService, "RestoreService", {
    start_restore(StartRestoreRequest) -> StartRestoreResponse as "StartRestore";
});

not_yet_implemented!(proto::schedule_service_server::ScheduleService, "ScheduleService", {
    create_schedule(CreateScheduleRequest) -> CreateScheduleResponse as "CreateSchedule";
    get_schedule(GetScheduleRequest) -> GetScheduleResponse as "GetSchedule";
    list_schedules(ListSchedulesRequest) -> ListSchedulesResponse as "ListSchedules";
    update_schedule(UpdateScheduleRequest) -> UpdateScheduleResponse as "UpdateSchedule";
    delete_schedule(DeleteScheduleRequest) -> DeleteScheduleResponse as "DeleteSchedule";
});

not_yet_implemented!(proto::run_service_server::RunService, "RunService", {
    get_run(GetRunRequest) -> GetRunResponse as "GetRun";
    list_runs(ListRunsRequest) -> ListRunsResponse as "ListRuns";
    cancel_run(CancelRunRequest) -> CancelRunResponse as "CancelRun";
}
    type WatchRunStream =
        Pin<Box<dyn Stream<Item = Result<proto::WatchRunResponse, Status>> + Send + 'static>>;

    async fn watch_run(
        &self,
        _request: Request<proto::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        Err(not_yet("coffer.v1.RunService/WatchRun"))
    }
);

/// Adds the not-yet-implemented services to the router.
pub fn add_services(router: Router) -> Router {
    let handler = NotYetImplementedHandler;
    router
        .add_service(proto::location_service_server::LocationServiceServer::new(
            handler,
        ))
        .add_service(proto::backup_service_server::BackupServiceServer::new(
            handler,
        ))
        .add_service(proto::restore_service_server::RestoreServiceServer::new(
            handler,
        ))
        .add_service(proto::run_service_server::RunServiceServer::new(handler))
        .add_service(proto::schedule_service_server::ScheduleServiceServer::new(
            handler,
        ))
}
