//! The one place where domain errors become gRPC statuses.
//!
//! Client-facing messages are the domain's own (they name fields and resources). Internal
//! errors are logged here in full and reach the client only as a short message, so internals
//! (SQL, paths) do not leak and a client cannot mistake a defect for bad input.

use tonic::Status;

use crate::error::{AgentCode, Error};

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            Error::NotFound { .. } => Status::not_found(error.to_string()),
            Error::AlreadyExists(message) => Status::already_exists(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::Unimplemented(message) => Status::unimplemented(message),
            Error::Unavailable(message) => Status::unavailable(message),
            Error::Agent { code, message } => agent_status(code, message),
            Error::Canceled => Status::cancelled("the run was canceled"),
            Error::Internal { context, source } => {
                tracing::error!(context, error = %source, "internal error");
                Status::internal(format!(
                    "internal error while trying to {context}; see the server log"
                ))
            }
        }
    }
}

/// An agent's failure, as the server's callers see it: what the caller can act on keeps its
/// code; what only the node's operator can fix is a failed precondition of this call.
fn agent_status(code: AgentCode, message: String) -> Status {
    match code {
        AgentCode::NotFound => Status::not_found(message),
        AgentCode::AlreadyExists => Status::already_exists(message),
        AgentCode::DataLoss => Status::data_loss(message),
        AgentCode::ResourceExhausted => Status::resource_exhausted(message),
        AgentCode::DeadlineExceeded => Status::deadline_exceeded(message),
        AgentCode::Canceled => Status::cancelled(message),
        AgentCode::Unavailable | AgentCode::Internal => Status::unavailable(message),
        AgentCode::InvalidArgument
        | AgentCode::FailedPrecondition
        | AgentCode::Unimplemented
        | AgentCode::PermissionDenied => Status::failed_precondition(message),
    }
}
