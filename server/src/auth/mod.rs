//! Who may call the API: bearer tokens with a scope, stored only as a hash of their secret.
//!
//! A token's secret is `coffer_<token id, 32 hex>_<43 characters of base64url randomness>`: the
//! id finds the token's record, and the BLAKE3 hash of the whole secret is compared with the
//! recorded one in constant time (`blake3::Hash`'s equality is). A token never reaches a log:
//! only its name does.
//!
//! [`scopes`] says which scope each method needs; the tower layer that enforces it for every
//! call lives beside the router (`grpc::auth`). This module never imports tonic.

pub mod scopes;

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::model::Name;

pub use scopes::{Scope, required_scope};

/// Prefix of every token secret, so that secret scanners and operators recognize one.
const SECRET_PREFIX: &str = "coffer_";
/// Random bytes in a secret.
const SECRET_RANDOM_BYTES: usize = 32;
/// How often a token's last use is written at most.
const LAST_USE_RESOLUTION: Duration = Duration::from_secs(60);

/// Whether the API asks for tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every call but health and reflection presents a token.
    #[default]
    Tokens,
    /// Anyone who reaches the port may do anything (loopback development only).
    None,
}

/// A token as recorded (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: Uuid,
    pub name: Name,
    pub scope: Scope,
    pub create_time: SystemTime,
    pub expire_time: Option<SystemTime>,
    /// Name of the token that created it; empty for the bootstrap token.
    pub created_by: String,
    pub last_use_time: Option<SystemTime>,
    /// BLAKE3 of the secret, hex.
    pub secret_hash: String,
}

/// Who a call comes from, as a run records it (`started_by`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A call that presented this token.
    Token {
        id: Uuid,
        name: String,
        scope: Scope,
    },
    /// A call to a server without authentication.
    Anonymous,
}

impl Caller {
    /// How runs record the caller.
    pub fn label(&self) -> String {
        match self {
            Self::Token { name, .. } => format!("token:{name}"),
            Self::Anonymous => "anonymous".into(),
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No token, an unknown, revoked or expired one, or a malformed header.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token without the scope the method needs.
    #[error("{0}")]
    PermissionDenied(String),
    /// The token could not be checked now (the catalog failed): worth retrying.
    #[error("{0}")]
    Unavailable(String),
}

/// A new token, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub name: Name,
    pub scope: Scope,
    pub expire_after: Option<Duration>,
}

/// Issues, lists, revokes and checks tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    catalog: Catalog,
    mode: AuthMode,
}

impl Tokens {
    pub fn new(catalog: Catalog, mode: AuthMode) -> Self {
        Self { catalog, mode }
    }

    /// Whether calls must present tokens.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Creates a token; returns it and its secret (shown only once). ALREADY_EXISTS for a
    /// taken name.
    pub async fn create(&self, new: NewToken, created_by: &Caller) -> Result<(Token, String)> {
        let id = Uuid::new_v4();
        let secret = new_secret(id)?;
        let now = SystemTime::now();
        let token =
            Token {
                id,
                name: new.name,
                scope: new.scope,
                create_time: now,
                expire_time: match new.expire_after {
                    None => None,
                    Some(after) => Some(now.checked_add(after).ok_or_else(|| {
                        Error::invalid("expire_after", "is too far in the future")
                    })?),
                },
                created_by: match created_by {
                    Caller::Token { name, .. } => name.clone(),
                    Caller::Anonymous => String::new(),
                },
                last_use_time: None,
                secret_hash: blake3::hash(secret.as_bytes()).to_hex().to_string(),
            };
        self.catalog.insert_token(&token).await?;
        tracing::info!(token = %token.name, scope = %token.scope, by = %created_by.label(),
            "token created");
        Ok((token, secret))
    }

    /// Every token, by name.
    pub async fn list(&self) -> Result<Vec<Token>> {
        self.catalog.list_tokens().await
    }

    /// Revokes the token of this name or id. NOT_FOUND for an unknown one.
    pub async fn revoke(&self, token: &str, by: &Caller) -> Result<()> {
        let revoked = self.catalog.delete_token(token).await?;
        tracing::info!(token = %revoked, by = %by.label(), "token revoked");
        Ok(())
    }

    /// The token of a caller, as recorded now.
    pub async fn get(&self, id: Uuid) -> Result<Token> {
        self.catalog
            .get_token(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "token",
                name: id.to_string(),
            })
    }

    /// Checks the `authorization` header value of a call to `method` (`/package.Service/Method`).
    /// Without authentication every call is the anonymous caller's; methods that need no scope
    /// (health, reflection) are let through without a token.
    pub async fn authorize(
        &self,
        method: &str,
        authorization: Option<&str>,
    ) -> std::result::Result<Option<Caller>, Denied> {
        if self.mode == AuthMode::None {
            return Ok(Some(Caller::Anonymous));
        }
        let Some(needed) = required_scope(method) else {
            return Ok(None);
        };
        let Some(header) = authorization else {
            return Err(Denied::Unauthenticated(
                "this call needs a token: send 'authorization: Bearer <token>' (cofferctl: \
                 COFFER_TOKEN or --token-file)"
                    .into(),
            ));
        };
        let secret = bearer_secret(header)?;
        self.authorize_secret(needed, secret, method)
            .await
            .map(Some)
    }

    /// Checks a token secret for `needed` scope, for what `purpose` names (a method, a page).
    /// Without authentication, the anonymous caller.
    pub async fn authorize_secret(
        &self,
        needed: Scope,
        secret: &str,
        purpose: &str,
    ) -> std::result::Result<Caller, Denied> {
        if self.mode == AuthMode::None {
            return Ok(Caller::Anonymous);
        }
        let token = self.verify(secret).await?;
        if !token.scope.includes(needed) {
            return Err(Denied::PermissionDenied(format!(
                "token {} has scope {}; {purpose} needs {needed}",
                token.name, token.scope
            )));
        }
        self.note_use(&token).await;
        Ok(Caller::Token {
            id: token.id,
            name: token.name.to_string(),
            scope: token.scope,
        })
    }

    /// The valid token whose secret this is.
    async fn verify(&self, secret: &str) -> std::result::Result<Token, Denied> {
        let unknown = || Denied::Unauthenticated("the token is not valid".into());
        let id = secret_id(secret).ok_or_else(unknown)?;
        let token = match self.catalog.get_token(id).await {
            Ok(Some(token)) => token,
            Ok(None) => return Err(unknown()),
            Err(error) => {
                tracing::warn!(%error, "look up a token");
                return Err(Denied::Unavailable(
                    "the token could not be checked now; try again".into(),
                ));
            }
        };
        let presented = blake3::hash(secret.as_bytes());
        let recorded = blake3::Hash::from_hex(&token.secret_hash).map_err(|_| unknown())?;
        // Constant time: blake3::Hash compares without early exit.
        if presented != recorded {
            return Err(unknown());
        }
        if token
            .expire_time
            .is_some_and(|expire| expire <= SystemTime::now())
        {
            return Err(Denied::Unauthenticated(format!(
                "token {} has expired",
                token.name
            )));
        }
        Ok(token)
    }

    /// Records that a token was used, at most once per [`LAST_USE_RESOLUTION`]; a failure to
    /// record it never fails the call.
    async fn note_use(&self, token: &Token) {
        let now = SystemTime::now();
        let recent = token.last_use_time.is_some_and(|last| {
            now.duration_since(last)
                .is_ok_and(|since| since < LAST_USE_RESOLUTION)
        });
        if recent {
            return;
        }
        if let Err(error) = self.catalog.touch_token(token.id, now).await {
            tracing::warn!(%error, token = %token.name, "record a token's last use");
        }
    }

    /// With tokens on and none recorded yet, creates the admin token `admin` and writes its
    /// secret to `file` (mode 0600, replacing what is there): the first way in. Returns whether
    /// it did.
    pub async fn bootstrap(&self, file: &Path) -> Result<bool> {
        if self.mode == AuthMode::None || !self.catalog.list_tokens().await?.is_empty() {
            return Ok(false);
        }
        let new = NewToken {
            name: Name::parse("name", "admin")?,
            scope: Scope::Admin,
            expire_after: None,
        };
        let (token, secret) = self.create(new, &Caller::Anonymous).await?;
        if let Err(error) = write_secret_file(file, &secret) {
            // Without the file nobody could use the token: take it back.
            let _ = self.catalog.delete_token(&token.id.to_string()).await;
            return Err(Error::FailedPrecondition(format!(
                "write the admin token to {}: {error}",
                file.display()
            )));
        }
        tracing::info!(file = %file.display(),
            "no token existed: created the admin token; its secret is in the file");
        Ok(true)
    }
}

/// The secret in an `authorization` header value, `Bearer <secret>`.
pub fn bearer_secret(header: &str) -> std::result::Result<&str, Denied> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            Denied::Unauthenticated("the authorization header is not 'Bearer <token>'".into())
        })
}

/// A fresh secret for token `id`.
fn new_secret(id: Uuid) -> Result<String> {
    use base64::Engine;
    let mut random = [0u8; SECRET_RANDOM_BYTES];
    getrandom::fill(&mut random).map_err(|error| Error::internal("draw a token secret", error))?;
    Ok(format!(
        "{SECRET_PREFIX}{}_{}",
        id.simple(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    ))
}

/// The token id a secret names; `None` for anything not shaped like a secret.
fn secret_id(secret: &str) -> Option<Uuid> {
    let rest = secret.strip_prefix(SECRET_PREFIX)?;
    let (id, random) = rest.split_once('_')?;
    if id.len() != 32 || random.is_empty() {
        return None;
    }
    Uuid::try_parse(id).ok()
}

/// Writes a secret to a file only its owner can read.
fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension("token.tmp");
    // A leftover temporary file would keep its own (maybe wider) mode: start afresh.
    match std::fs::remove_file(&temporary) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_name_their_token_and_nothing_else_parses() {
        let id = Uuid::new_v4();
        let secret = new_secret(id).expect("secret");
        assert!(secret.starts_with("coffer_"));
        assert_eq!(secret_id(&secret), Some(id));
        assert_ne!(new_secret(id).expect("another"), secret, "random");
        for bad in [
            "",
            "coffer_",
            "coffer_abc_def",
            "token",
            &secret.replace("coffer_", "x_"),
        ] {
            assert_eq!(secret_id(bad), None, "{bad}");
        }
    }
}
