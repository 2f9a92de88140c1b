//! API tokens: only the hash of each secret is stored.

use std::time::SystemTime;

use sqlx::Row;
use uuid::Uuid;

use super::{Catalog, database_error, from_millis, millis, parse_uuid, write_error};
use crate::auth::{Scope, Token};
use crate::error::{Error, Result};
use crate::model::Name;

const COLUMNS: &str = "id, name, secret_hash, scope, create_time_ms, expire_time_ms, created_by, \
                       last_use_ms";

impl Catalog {
    /// Records a new token. ALREADY_EXISTS when the name is taken.
    pub async fn insert_token(&self, token: &Token) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, secret_hash, scope, create_time_ms, \
             expire_time_ms, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(token.id.to_string())
        .bind(token.name.as_str())
        .bind(&token.secret_hash)
        .bind(token.scope.as_str())
        .bind(millis(token.create_time))
        .bind(token.expire_time.map(millis))
        .bind(&token.created_by)
        .execute(&self.pool)
        .await
        .map_err(|error| match write_error("insert token", error) {
            Error::AlreadyExists(_) => Error::AlreadyExists(format!(
                "a token named {:?} exists already",
                token.name.as_str()
            )),
            other => other,
        })?;
        Ok(())
    }

    /// The token with this id, if any.
    pub async fn get_token(&self, id: Uuid) -> Result<Option<Token>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_tokens WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| database_error("look up token", error))?
        .map(|row| read_token(&row))
        .transpose()
    }

    /// Every token, by name.
    pub async fn list_tokens(&self) -> Result<Vec<Token>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_tokens ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("list tokens", error))?
        .iter()
        .map(read_token)
        .collect()
    }

    /// Deletes the token of this id or name; returns its name. NOT_FOUND for none.
    pub async fn delete_token(&self, reference: &str) -> Result<String> {
        let name: Option<String> =
            sqlx::query_scalar("DELETE FROM api_tokens WHERE id = ? OR name = ? RETURNING name")
                .bind(reference)
                .bind(reference)
                .fetch_optional(&self.pool)
                .await
                .map_err(|error| database_error("delete token", error))?;
        name.ok_or_else(|| Error::NotFound {
            kind: "token",
            name: reference.to_string(),
        })
    }

    /// Records when a token was last presented.
    pub async fn touch_token(&self, id: Uuid, time: SystemTime) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET last_use_ms = ? WHERE id = ?")
            .bind(millis(time))
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(|error| database_error("record token use", error))?;
        Ok(())
    }
}

fn read_token(row: &sqlx::sqlite::SqliteRow) -> Result<Token> {
    let get = |error| database_error("read token", error);
    let scope: String = row.try_get("scope").map_err(get)?;
    Ok(Token {
        id: parse_uuid(&row.try_get::<String, _>("id").map_err(get)?)?,
        name: Name::parse(
            "catalog api_tokens.name",
            &row.try_get::<String, _>("name").map_err(get)?,
        )
        .map_err(|error| Error::internal("decode token name", error))?,
        scope: Scope::parse(&scope)
            .ok_or_else(|| Error::internal("decode token scope", scope.clone()))?,
        create_time: from_millis(row.try_get("create_time_ms").map_err(get)?),
        expire_time: row
            .try_get::<Option<i64>, _>("expire_time_ms")
            .map_err(get)?
            .map(from_millis),
        created_by: row.try_get("created_by").map_err(get)?,
        last_use_time: row
            .try_get::<Option<i64>, _>("last_use_ms")
            .map_err(get)?
            .map(from_millis),
        secret_hash: row.try_get("secret_hash").map_err(get)?,
    })
}
