//! Locations in the catalog.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::{Catalog, database_error, from_millis, millis, parse_uuid, write_error};
use crate::error::{Error, Result};
use crate::model::location::{Location, LocationOptions};
use crate::model::{Name, Page};

const COLUMNS: &str =
    "id, name, options, compression, encryption_key, create_time_ms, update_time_ms";

impl Catalog {
    /// Records a new location. ALREADY_EXISTS when the name is taken.
    pub async fn insert_location(&self, location: &Location) -> Result<()> {
        let options = serde_json::to_string(&location.options)
            .map_err(|error| Error::internal("encode location options", error))?;
        sqlx::query(
            "INSERT INTO locations \
             (id, name, kind, options, compression, encryption_key, create_time_ms, \
             update_time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(location.id.to_string())
        .bind(location.name.as_str())
        .bind(location.options.kind())
        .bind(options)
        .bind(location.compression.to_string())
        .bind(encryption_key_column(location))
        .bind(millis(location.create_time))
        .bind(millis(location.update_time))
        .execute(&self.pool)
        .await
        .map_err(|error| match write_error("insert location", error) {
            Error::AlreadyExists(_) => Error::AlreadyExists(format!(
                "a location named {:?} exists already",
                location.name.as_str()
            )),
            other => other,
        })?;
        Ok(())
    }

    /// Finds a location by id or, failing that, by name.
    pub async fn find_location(&self, reference: &str) -> Result<Option<Location>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM locations WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1"
        )))
        .bind(reference)
        .bind(reference)
        .bind(reference)
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| database_error("look up location", error))?
        .map(|row| read_location(&row))
        .transpose()
    }

    /// Lists locations by name after `after`, optionally of one kind.
    pub async fn list_locations(
        &self,
        page_size: u32,
        after: Option<Name>,
        kind: Option<&str>,
    ) -> Result<Page<Location>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM locations WHERE name > ? AND (? IS NULL OR kind = ?) \
             ORDER BY name LIMIT ?"
        )))
        .bind(after.map(|name| name.to_string()).unwrap_or_default())
        .bind(kind)
        .bind(kind)
        .bind(i64::from(page_size) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("list locations", error))?;
        let mut items = rows
            .iter()
            .take(page_size as usize)
            .map(read_location)
            .collect::<Result<Vec<_>>>()?;
        let next_page_token = if rows.len() > page_size as usize {
            items
                .last()
                .map(|last| crate::model::page::Cursor::AfterName(last.name.clone()).encode())
        } else {
            None
        };
        items.shrink_to_fit();
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Writes a location's new name and options, unless a run uses it, or (when `moves_data`)
    /// backups stored there are in the catalog. ALREADY_EXISTS when the new name is taken.
    pub async fn update_location(&self, location: &Location, moves_data: bool) -> Result<()> {
        let options = serde_json::to_string(&location.options)
            .map_err(|error| Error::internal("encode location options", error))?;
        let mut tx = self.begin_write().await?;
        let id = location.id.to_string();
        let active: Option<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM runs WHERE location_id = ? AND state IN {} LIMIT 1",
            super::ACTIVE_RUN_STATES
        )))
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|error| database_error("look up runs of location", error))?
        .map(|row| row.get(0));
        if let Some(run) = active {
            return Err(Error::FailedPrecondition(format!(
                "location {} is used by active run {run}; change it once the run ends",
                location.name
            )));
        }
        if moves_data {
            let backups: i64 = sqlx::query("SELECT count(*) FROM backups WHERE location_id = ?")
                .bind(&id)
                .fetch_one(&mut *tx)
                .await
                .map_err(|error| database_error("count backups of location", error))?
                .get(0);
            if backups > 0 {
                return Err(Error::FailedPrecondition(format!(
                    "location {} holds {backups} backup(s): its path, bucket, container, account \
                     or prefix cannot change (create a new location instead)",
                    location.name
                )));
            }
        }
        sqlx::query(
            "UPDATE locations SET name = ?, options = ?, compression = ?, encryption_key = ?, \
             update_time_ms = ? WHERE id = ?",
        )
        .bind(location.name.as_str())
        .bind(options)
        .bind(location.compression.to_string())
        .bind(encryption_key_column(location))
        .bind(millis(location.update_time))
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(|error| match write_error("update location", error) {
            Error::AlreadyExists(_) => Error::AlreadyExists(format!(
                "a location named {:?} exists already",
                location.name.as_str()
            )),
            other => other,
        })?;
        tx.commit()
            .await
            .map_err(|error| database_error("commit location update", error))
    }

    /// Deletes a location and the catalog's records of its backups, unless a run uses it.
    ///
    /// Fails with NOT_FOUND when the location does not exist and FAILED_PRECONDITION, naming the
    /// run, while an active run uses it.
    pub async fn delete_location(&self, location_id: Uuid, reference: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let id = location_id.to_string();
        let active = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM runs WHERE location_id = ? AND state IN {} LIMIT 1",
            super::ACTIVE_RUN_STATES
        )))
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|error| database_error("look up runs of location", error))?;
        if let Some(row) = active {
            let run: String = row.get(0);
            return Err(Error::FailedPrecondition(format!(
                "location {reference:?} is used by active run {run}; cancel it or wait for it to end"
            )));
        }
        for statement in [
            "DELETE FROM backups WHERE location_id = ?",
            "UPDATE runs SET location_id = NULL WHERE location_id = ?",
        ] {
            sqlx::query(statement)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(|error| database_error("delete location", error))?;
        }
        let deleted = sqlx::query("DELETE FROM locations WHERE id = ?")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("delete location", error))?;
        if deleted.rows_affected() == 0 {
            return Err(Error::NotFound {
                kind: "location",
                name: reference.to_string(),
            });
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit location deletion", error))
    }
}

fn encryption_key_column(location: &Location) -> &str {
    location.encryption_key.as_ref().map_or("", Name::as_str)
}

fn read_location(row: &SqliteRow) -> Result<Location> {
    let get = |error| database_error("decode location row", error);
    let options: String = row.try_get("options").map_err(get)?;
    let options: LocationOptions = serde_json::from_str(&options)
        .map_err(|error| Error::internal("decode location options", error))?;
    let name: String = row.try_get("name").map_err(get)?;
    let compression: String = row.try_get("compression").map_err(get)?;
    let compression = compression
        .parse()
        .map_err(|error: String| Error::internal("decode location compression", error))?;
    let encryption_key: String = row.try_get("encryption_key").map_err(get)?;
    let encryption_key = (!encryption_key.is_empty())
        .then(|| Name::parse("catalog locations.encryption_key", &encryption_key))
        .transpose()
        .map_err(|error| Error::internal("decode location encryption key", error))?;
    Ok(Location {
        id: parse_uuid(&row.try_get::<String, _>("id").map_err(get)?)?,
        name: Name::parse("catalog locations.name", &name)
            .map_err(|error| Error::internal("decode location name", error))?,
        options,
        compression,
        encryption_key,
        create_time: from_millis(row.try_get("create_time_ms").map_err(get)?),
        update_time: from_millis(row.try_get("update_time_ms").map_err(get)?),
    })
}
