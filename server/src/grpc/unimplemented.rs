//! Services of the API that later versions implement. Every RPC answers UNIMPLEMENTED with a
//! message saying so, rather than the bare "method not found" of an unregistered service, and
//! the services are registered so reflection and health list the whole API.

use coffer_proto::v1 as proto;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};

use crate::error::Error;

/// Answers every RPC of the services it implements with UNIMPLEMENTED.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotYetImplementedHandler;

/// UNIMPLEMENTED for `method` (`coffer.v1.Service/Method`), saying it comes later.
pub fn not_yet(method: &str) -> Status {
    Error::Unimplemented(format!(
        "{method} is part of the coffer.v1 API but not implemented by coffer-server {} yet",
        env!("CARGO_PKG_VERSION")
    ))
    .into()
}

/// Implements the listed unary RPCs of a service trait as "not yet implemented".
macro_rules! not_yet_implemented {
    ($service:path, $name:literal, { $($method:ident($request:ident) -> $response:ident as $rpc:literal;)* }) => {
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
        }
    };
}

not_yet_implemented!(proto::schedule_service_server::ScheduleService, "ScheduleService", {
    create_schedule(CreateScheduleRequest) -> CreateScheduleResponse as "CreateSchedule";
    get_schedule(GetScheduleRequest) -> GetScheduleResponse as "GetSchedule";
    list_schedules(ListSchedulesRequest) -> ListSchedulesResponse as "ListSchedules";
    update_schedule(UpdateScheduleRequest) -> UpdateScheduleResponse as "UpdateSchedule";
    delete_schedule(DeleteScheduleRequest) -> DeleteScheduleResponse as "DeleteSchedule";
    run_schedule(RunScheduleRequest) -> RunScheduleResponse as "RunSchedule";
    list_schedule_fires(ListScheduleFiresRequest) -> ListScheduleFiresResponse as "ListScheduleFires";
});

/// Adds the not-yet-implemented services to the router.
pub fn add_services(router: Router) -> Router {
    let handler = NotYetImplementedHandler;
    router.add_service(proto::schedule_service_server::ScheduleServiceServer::new(
        handler,
    ))
}
