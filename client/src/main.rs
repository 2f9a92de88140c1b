//! `cofferctl`, the command-line client of a Coffer server.
//!
//! Parses the command line, runs the command, and turns its error into one line on stderr and a
//! documented exit code (see `cli::exit`). Everything else lives in the `cli` modules.

mod cli;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Usage errors exit here with code 2; --help and --version with 0.
    let command_line = cli::Cli::parse();
    match cli::run(command_line).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(line) = error.report() {
                // Nowhere left to report a failing stderr.
                let _ = writeln!(std::io::stderr(), "cofferctl: {line}");
            }
            error.exit().into()
        }
    }
}
