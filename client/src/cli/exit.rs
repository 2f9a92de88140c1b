//! The exit codes scripts can rely on, and how gRPC status codes map onto them.
//!
//! The numbers are a public contract: they may gain new values but never change meaning.
//! [`EXIT_CODES_HELP`] is the one text that documents them (in `--help` and the README).

use tonic::Code;

/// How `cofferctl` ends. The discriminant is the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything worked.
    Success = 0,
    /// Any error not listed below.
    Failure = 1,
    /// The command line is wrong (clap uses the same code for its own parse errors).
    Usage = 2,
    /// The server is unreachable, UNAVAILABLE or DEADLINE_EXCEEDED: worth retrying.
    Unavailable = 3,
    /// The server rejected the request as INVALID_ARGUMENT.
    InvalidArgument = 4,
    /// The server answered NOT_FOUND: what the command names does not exist.
    NotFound = 5,
    /// The server answered ALREADY_EXISTS: what the command would create exists already.
    AlreadyExists = 6,
    /// FAILED_PRECONDITION: the request is valid but the system is not in a state to do it.
    FailedPrecondition = 7,
    /// A check found a problem: `cluster check` a node that is not serving, `location check` a
    /// node on which a step failed.
    CheckFailed = 8,
    /// UNIMPLEMENTED: the server does not support this call (yet).
    Unimplemented = 9,
    /// The run a command followed to its end (`--watch`, `run watch`) FAILED.
    RunFailed = 10,
    /// The run a command followed to its end was CANCELED.
    RunCanceled = 11,
    /// UNAUTHENTICATED: no token, or one that is unknown, revoked or expired.
    Unauthenticated = 12,
    /// PERMISSION_DENIED: the token lacks the scope the call needs.
    PermissionDenied = 13,
}

/// The exit code table, for `--help` and the README. Keep it in step with [`Exit`].
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other error
  2  usage error (bad flags or arguments)
  3  server unreachable, UNAVAILABLE or DEADLINE_EXCEEDED (worth retrying)
  4  INVALID_ARGUMENT
  5  NOT_FOUND
  6  ALREADY_EXISTS
  7  FAILED_PRECONDITION
  8  a check failed: cluster check found a node not serving, location check a failed step
  9  UNIMPLEMENTED
 10  the followed run (--watch, --dry-run, run watch) ended FAILED
 11  the followed run ended CANCELED
 12  UNAUTHENTICATED (no token, or an unknown, revoked or expired one)
 13  PERMISSION_DENIED (the token lacks the scope)";

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit code for a gRPC status code.
    pub fn for_status(code: Code) -> Self {
        match code {
            Code::Ok => Self::Success,
            Code::Unavailable | Code::DeadlineExceeded => Self::Unavailable,
            Code::InvalidArgument => Self::InvalidArgument,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists => Self::AlreadyExists,
            Code::FailedPrecondition => Self::FailedPrecondition,
            Code::Unimplemented => Self::Unimplemented,
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::PermissionDenied,
            Code::Cancelled
            | Code::Unknown
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Internal
            | Code::DataLoss => Self::Failure,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// A status code in lowercase words, as printed in error lines: `not found`.
pub fn code_words(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_documented_exit_codes() {
        let cases = [
            (Code::Unavailable, 3),
            (Code::DeadlineExceeded, 3),
            (Code::InvalidArgument, 4),
            (Code::NotFound, 5),
            (Code::AlreadyExists, 6),
            (Code::FailedPrecondition, 7),
            (Code::Unimplemented, 9),
            (Code::Internal, 1),
            (Code::Unauthenticated, 12),
            (Code::PermissionDenied, 13),
            (Code::Unknown, 1),
        ];
        for (code, expected) in cases {
            assert_eq!(Exit::for_status(code).code(), expected, "{code:?}");
        }
    }

    #[test]
    fn help_text_documents_every_exit_code() {
        let all = [
            Exit::Success,
            Exit::Failure,
            Exit::Usage,
            Exit::Unavailable,
            Exit::InvalidArgument,
            Exit::NotFound,
            Exit::AlreadyExists,
            Exit::FailedPrecondition,
            Exit::CheckFailed,
            Exit::Unimplemented,
            Exit::RunFailed,
            Exit::RunCanceled,
            Exit::Unauthenticated,
            Exit::PermissionDenied,
        ];
        let documented: Vec<u8> = EXIT_CODES_HELP
            .lines()
            .filter_map(|line| line.split_whitespace().next()?.parse().ok())
            .collect();
        let codes: Vec<u8> = all.iter().map(|exit| exit.code()).collect();
        assert_eq!(documented, codes);
    }

    #[test]
    fn code_words_are_lowercase_words() {
        assert_eq!(code_words(Code::NotFound), "not found");
        assert_eq!(code_words(Code::FailedPrecondition), "failed precondition");
        assert_eq!(code_words(Code::Unavailable), "unavailable");
    }
}
