//! The one place where domain errors become gRPC statuses.
//!
//! Client-facing messages are the domain's own (they name fields and resources). Internal
//! errors are logged here in full and reach the client only as a short message, so internals
//! (SQL, paths) do not leak and a client cannot mistake a defect for bad input.

use tonic::Status;

use crate::error::Error;

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            Error::NotFound { .. } => Status::not_found(error.to_string()),
            Error::AlreadyExists(message) => Status::already_exists(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::Unimplemented(message) => Status::unimplemented(message),
            Error::Unavailable(message) => Status::unavailable(message),
            Error::Internal { context, source } => {
                tracing::error!(context, error = %source, "internal error");
                Status::internal(format!(
                    "internal error while trying to {context}; see the server log"
                ))
            }
        }
    }
}
