//! The server's domain error.
//!
//! Domain and catalog code return [`Error`]; the gRPC layer turns it into a status in exactly one
//! place (`grpc::status`). Variants say what kind of failure it is for the caller, which decides
//! the status code.

use std::fmt;

/// A failure of a domain operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` names the offending field as the API spells it
    /// (`nodes[2].address`).
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Path of the field in the request.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The named resource does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind of resource (`cluster`, `node`).
        kind: &'static str,
        /// The name or id that was looked up.
        name: String,
    },
    /// The resource (or a part of it that must be unique) exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows the operation; the message says what to change.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operation is part of the API but not implemented by this version.
    #[error("{0}")]
    Unimplemented(String),
    /// A dependency (the catalog) is momentarily unable to serve; retrying may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// An agent (or the way to it) failed; `code` says what kind of failure it reported, and
    /// the message names the agent.
    #[error("{message}")]
    Agent {
        /// The kind of failure, as the agent reported it.
        code: AgentCode,
        /// The agent's address and message.
        message: String,
    },
    /// The run was canceled (by a cancel or by the server shutting down).
    #[error("canceled")]
    Canceled,
    /// A defect or an unexpected failure; details are logged, not shown to clients.
    #[error("{context}: {source}")]
    Internal {
        /// What was being done, in present tense (`read cluster rows`).
        context: &'static str,
        /// The underlying failure.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// Shorthand for [`Error::Internal`].
    pub fn internal(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Internal {
            context,
            source: source.into(),
        }
    }
}

/// The kind of failure an agent reported: its gRPC status code, in the domain's terms (the
/// domain never sees tonic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCode {
    /// The object, manifest or snapshot asked for does not exist.
    NotFound,
    /// The agent refused the request's content.
    InvalidArgument,
    /// A snapshot with that tag exists already.
    AlreadyExists,
    /// The node or the storage is not in a state that allows the call.
    FailedPrecondition,
    /// Stored data is corrupt or does not match its manifest.
    DataLoss,
    /// A disk or a quota is full.
    ResourceExhausted,
    /// The call, or a hook it ran, took too long.
    DeadlineExceeded,
    /// The call was canceled.
    Canceled,
    /// The agent or its storage could not be reached; trying again may help.
    Unavailable,
    /// The agent does not know the call (an older agent).
    Unimplemented,
    /// The agent refused the caller.
    PermissionDenied,
    /// A defect, or a failure the agent did not classify.
    Internal,
}

/// Result of a domain operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
