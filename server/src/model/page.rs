//! Pages of listings, and the one codec of their page tokens.
//!
//! On the wire a page token is opaque: clients pass `next_page_token` back unchanged, so the
//! encoding can change. Each listing resumes from its own kind of [`Cursor`], and a token of
//! another listing (or garbage) is refused naming the field.

use std::time::SystemTime;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{MAX_NAME_LEN, Name};

/// Default number of items in a page.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Token of the next page, if there is one.
    pub next_page_token: Option<String>,
}

/// Validates a requested page size read from `field`; 0 means the default.
pub fn parse_page_size(field: &str, size: i32) -> Result<u32> {
    match u32::try_from(size) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) if size <= MAX_PAGE_SIZE => Ok(size),
        _ => Err(Error::invalid(
            field,
            format!("{size} is outside 0..={MAX_PAGE_SIZE}"),
        )),
    }
}

/// Where a listing resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Listings by name (clusters, locations): after this name. Wire form `c1` and the name's
    /// hex.
    AfterName(Name),
    /// Backups, newest first: after the one started at `ms` with this id. `b1.<ms>.<id>`.
    AfterBackup { ms: i64, id: Uuid },
    /// Runs, newest first: after the one created at `ms` with this id. `r1.<ms>.<id>`.
    AfterRun { ms: i64, id: Uuid },
    /// A backup's files: the `node_index`th node's manifest, from entry `offset`.
    /// `f1.<node_index>.<offset>`.
    InManifest { node_index: usize, offset: u64 },
    /// A schedule's fires, newest first: after the one at `ms`, attempt `attempt`.
    /// `s1.<ms>.<attempt>`.
    AfterFire { ms: i64, attempt: u32 },
}

/// The kinds of [`Cursor`], to say which one a listing accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorKind {
    Name,
    Backup,
    Run,
    Manifest,
    Fire,
}

impl Cursor {
    /// Resumes after the backup or run at `time` with `id`.
    pub fn after_time(kind: CursorKind, time: SystemTime, id: Uuid) -> Self {
        let ms = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        match kind {
            CursorKind::Run => Self::AfterRun { ms, id },
            _ => Self::AfterBackup { ms, id },
        }
    }

    /// The token's wire form.
    pub fn encode(&self) -> String {
        match self {
            Self::AfterName(name) => {
                let mut token = String::from("c1");
                for byte in name.as_str().bytes() {
                    token.push_str(&format!("{byte:02x}"));
                }
                token
            }
            Self::AfterBackup { ms, id } => format!("b1.{ms}.{id}"),
            Self::AfterRun { ms, id } => format!("r1.{ms}.{id}"),
            Self::InManifest { node_index, offset } => format!("f1.{node_index}.{offset}"),
            Self::AfterFire { ms, attempt } => format!("s1.{ms}.{attempt}"),
        }
    }

    /// Parses a token read from `field` for a listing that resumes from `kind`; an empty token
    /// means the first page.
    pub fn parse(field: &str, kind: CursorKind, token: &str) -> Result<Option<Self>> {
        if token.is_empty() {
            return Ok(None);
        }
        let cursor = match kind {
            CursorKind::Name => parse_name(field, token),
            CursorKind::Backup => {
                parse_pair(token, "b1").map(|(ms, id)| Self::AfterBackup { ms, id })
            }
            CursorKind::Run => parse_pair(token, "r1").map(|(ms, id)| Self::AfterRun { ms, id }),
            CursorKind::Manifest => parse_pair(token, "f1")
                .map(|(node_index, offset)| Self::InManifest { node_index, offset }),
            CursorKind::Fire => {
                parse_pair(token, "s1").map(|(ms, attempt)| Self::AfterFire { ms, attempt })
            }
        };
        cursor.map(Some).ok_or_else(|| {
            Error::invalid(
                field,
                "malformed page token; pass next_page_token back unchanged",
            )
        })
    }

    /// The name a listing by name resumes after.
    pub fn parse_name(field: &str, token: &str) -> Result<Option<Name>> {
        Ok(match Self::parse(field, CursorKind::Name, token)? {
            Some(Self::AfterName(name)) => Some(name),
            _ => None,
        })
    }

    /// The (ms, id) a newest-first listing of `kind` resumes after.
    pub fn parse_time(field: &str, kind: CursorKind, token: &str) -> Result<Option<(i64, Uuid)>> {
        Ok(match Self::parse(field, kind, token)? {
            Some(Self::AfterBackup { ms, id } | Self::AfterRun { ms, id }) => Some((ms, id)),
            _ => None,
        })
    }
}

fn parse_name(field: &str, token: &str) -> Option<Cursor> {
    let hex = token.strip_prefix("c1")?;
    if !hex.len().is_multiple_of(2) || hex.len() > 2 * MAX_NAME_LEN {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let name = String::from_utf8(bytes).ok()?;
    Name::parse(field, &name).ok().map(Cursor::AfterName)
}

fn parse_pair<A: std::str::FromStr, B: std::str::FromStr>(
    token: &str,
    prefix: &str,
) -> Option<(A, B)> {
    let mut parts = token.splitn(3, '.');
    if parts.next() != Some(prefix) {
        return None;
    }
    let first = parts.next()?.parse().ok()?;
    let second = parts.next()?.parse().ok()?;
    Some((first, second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let cursors = [
            Cursor::AfterName(Name::parse("n", "prod").expect("name")),
            Cursor::AfterBackup {
                ms: 1_700_000_000_123,
                id: Uuid::now_v7(),
            },
            Cursor::AfterRun {
                ms: 5,
                id: Uuid::now_v7(),
            },
            Cursor::InManifest {
                node_index: 2,
                offset: 1000,
            },
            Cursor::AfterFire {
                ms: 1_700_000_000_000,
                attempt: 3,
            },
        ];
        let kinds = [
            CursorKind::Name,
            CursorKind::Backup,
            CursorKind::Run,
            CursorKind::Manifest,
            CursorKind::Fire,
        ];
        for (cursor, kind) in cursors.into_iter().zip(kinds) {
            let parsed = Cursor::parse("page_token", kind, &cursor.encode()).expect("parse");
            assert_eq!(parsed, Some(cursor));
        }
        assert_eq!(
            Cursor::parse("page_token", CursorKind::Name, "").expect("empty"),
            None
        );
    }

    #[test]
    fn garbage_and_tokens_of_other_listings_are_refused_naming_the_field() {
        let run = Cursor::AfterRun {
            ms: 5,
            id: Uuid::nil(),
        }
        .encode();
        for (kind, bad) in [
            (CursorKind::Name, "x"),
            (CursorKind::Name, "c1zz"),
            (CursorKind::Name, "c1f"),
            (CursorKind::Name, "c14142"),
            (CursorKind::Backup, run.as_str()),
            (CursorKind::Backup, "b1.x.y"),
            (CursorKind::Manifest, "f1.-1.0"),
            (CursorKind::Fire, "s1.5.-1"),
        ] {
            let error = Cursor::parse("page_token", kind, bad).expect_err(bad);
            assert!(error.to_string().contains("page_token"), "{error}");
        }
    }
}
