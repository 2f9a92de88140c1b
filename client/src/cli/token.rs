//! `cofferctl token`: the API's bearer tokens.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use coffer_client::proto;

use crate::cli::format::{self, NONE};
use crate::cli::output::OutputFormat;
use crate::cli::table::{Table, fields};
use crate::cli::{CliError, Session};

/// `cofferctl token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown only this once).
    Create(CreateArgs),
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token: calls presenting it fail from then on.
    Revoke(RevokeArgs),
    /// Show the token this command presents.
    Whoami,
}

/// What a token allows; scopes nest (operate includes read, admin both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    /// Get, list, watch and check.
    Read,
    /// Read, and start and cancel backups, restores, validations and purges; run schedules.
    Operate,
    /// Operate, and change clusters, locations, schedules and tokens; delete backups.
    Admin,
}

/// Arguments of `token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the token: lowercase letters, digits, '-' and '_', starting with a letter.
    pub name: String,
    /// What the token allows.
    #[arg(long, value_enum)]
    pub scope: ScopeArg,
    /// Stop accepting the token after this long, e.g. 90d (default: never).
    #[arg(long, value_name = "DURATION", value_parser = coffer_process::parse_duration)]
    pub expires_in: Option<Duration>,
}

/// Arguments of `token revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Name or id of the token. (Not called `token`: the global --token is.)
    #[arg(value_name = "TOKEN")]
    pub reference: String,
}

/// Runs a `token` command.
pub async fn run(command: TokenCommand, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let mut tokens = client.tokens();
    match command {
        TokenCommand::Create(args) => {
            let response = tokens
                .create_token(proto::CreateTokenRequest {
                    name: args.name,
                    scope: match args.scope {
                        ScopeArg::Read => proto::TokenScope::Read,
                        ScopeArg::Operate => proto::TokenScope::Operate,
                        ScopeArg::Admin => proto::TokenScope::Admin,
                    }
                    .into(),
                    expire_after: args
                        .expires_in
                        .and_then(|after| prost_types::Duration::try_from(after).ok()),
                })
                .await?
                .into_inner();
            match session.output.format() {
                OutputFormat::Json => session.output.response(&response, |_| Ok(String::new())),
                OutputFormat::Table => {
                    session.output.data(&format!("{}\n", response.secret))?;
                    session.output.note(
                        "the token's secret is above; it is shown only this once \
                         (cofferctl reads it from COFFER_TOKEN or --token-file)",
                    );
                    Ok(())
                }
            }
        }
        TokenCommand::List => {
            let response = tokens
                .list_tokens(proto::ListTokensRequest {})
                .await?
                .into_inner();
            session.output.response(&response, |response| {
                let mut table = Table::new([
                    "NAME",
                    "SCOPE",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                    "CREATED BY",
                    "ID",
                ]);
                for token in &response.tokens {
                    table.push([
                        token.name.clone(),
                        scope_name(token.scope()).to_owned(),
                        format::timestamp(token.create_time.as_ref()),
                        format::timestamp(token.expire_time.as_ref()),
                        format::timestamp(token.last_use_time.as_ref()),
                        if token.created_by.is_empty() {
                            NONE.to_owned()
                        } else {
                            token.created_by.clone()
                        },
                        token.id.clone(),
                    ]);
                }
                Ok(table.render())
            })
        }
        TokenCommand::Revoke(args) => {
            let response = tokens
                .revoke_token(proto::RevokeTokenRequest {
                    token: args.reference.clone(),
                })
                .await?
                .into_inner();
            match session.output.format() {
                OutputFormat::Json => session.output.response(&response, |_| Ok(String::new())),
                OutputFormat::Table => {
                    session
                        .output
                        .note(format_args!("revoked token {}", args.reference));
                    Ok(())
                }
            }
        }
        TokenCommand::Whoami => {
            let response = tokens.who_am_i(proto::WhoAmIRequest {}).await?.into_inner();
            session.output.response(&response, |response| {
                Ok(match &response.token {
                    None => "no token: the server runs without authentication\n".to_owned(),
                    Some(token) => fields([
                        ("Name", token.name.clone()),
                        ("Scope", scope_name(token.scope()).to_owned()),
                        ("Expires", format::timestamp(token.expire_time.as_ref())),
                        ("Id", token.id.clone()),
                    ]),
                })
            })
        }
    }
}

fn scope_name(scope: proto::TokenScope) -> &'static str {
    match scope {
        proto::TokenScope::Read => "read",
        proto::TokenScope::Operate => "operate",
        proto::TokenScope::Admin => "admin",
        proto::TokenScope::Unspecified => "-",
    }
}
