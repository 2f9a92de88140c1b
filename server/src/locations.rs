//! Storage locations: named places where backups are kept.
//!
//! The catalog holds a location's kind and options, and secrets only by reference (the name of an
//! environment variable or a file on the nodes): the server never holds a credential, so no
//! response, catalog row or log line can leak one. Agents resolve the references when they open
//! the storage, through [`Location::storage`], which turns a location into OpenDAL settings.

use std::sync::Arc;
use std::time::SystemTime;

use uuid::Uuid;

use crate::agents::{AgentClients, storage};
use crate::catalog::Catalog;
use crate::clusters::ClusterRegistry;
use crate::error::{Error, Result};
use crate::model::location::{
    ListLocations, Location, LocationUpdate, NewLocation, NodeLocationCheck,
};
use crate::model::{Cluster, Page};

/// Creates, reads and removes locations.
#[derive(Debug, Clone)]
pub struct LocationRegistry {
    catalog: Catalog,
    clusters: ClusterRegistry,
    agents: Arc<AgentClients>,
}

impl LocationRegistry {
    /// A registry over the catalog, checking locations through the agents of `clusters`.
    pub fn new(catalog: Catalog, clusters: ClusterRegistry, agents: Arc<AgentClients>) -> Self {
        Self {
            catalog,
            clusters,
            agents,
        }
    }

    /// Makes every node of `cluster` write, read, list and delete a probe object in
    /// `location`; returns the location, the cluster and what each node found.
    ///
    /// Fails with INVALID_ARGUMENT without a cluster, NOT_FOUND for an unknown one or location.
    pub async fn check(
        &self,
        location: &str,
        cluster: &str,
    ) -> Result<(Location, Cluster, Vec<NodeLocationCheck>)> {
        if cluster.is_empty() {
            return Err(Error::invalid(
                "cluster",
                "is required (the cluster whose agents check)",
            ));
        }
        let location = self.get(location).await?;
        let cluster = self.clusters.get(cluster).await?;
        let checks = storage::check_location(&self.agents, &cluster, &location).await;
        Ok((location, cluster, checks))
    }

    /// Records a new location. Storage is not contacted (CheckLocation does that).
    ///
    /// Fails with ALREADY_EXISTS when the name is taken.
    pub async fn create(&self, new: NewLocation) -> Result<Location> {
        let now = SystemTime::now();
        let location = Location {
            id: Uuid::now_v7(),
            name: new.name,
            options: new.options,
            compression: new.compression,
            encryption_key: new.encryption_key,
            create_time: now,
            update_time: now,
        };
        self.catalog.insert_location(&location).await?;
        tracing::info!(location = %location.name, kind = location.options.kind(), "created location");
        Ok(location)
    }

    /// The location with this name or id; NOT_FOUND otherwise.
    pub async fn get(&self, reference: &str) -> Result<Location> {
        if reference.is_empty() {
            return Err(Error::invalid(
                "location",
                "is required (a location name or id)",
            ));
        }
        self.catalog
            .find_location(reference)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "location",
                name: reference.to_string(),
            })
    }

    /// One page of locations by name.
    pub async fn list(&self, query: ListLocations) -> Result<Page<Location>> {
        self.catalog
            .list_locations(query.page_size, query.after, query.kind)
            .await
    }

    /// Renames a location or replaces its options, atomically. See the API for the rules.
    pub async fn update(&self, update: LocationUpdate) -> Result<Location> {
        let current = self.get(&update.location).await?;
        if let Some(options) = &update.options
            && options.kind() != current.options.kind()
        {
            return Err(Error::invalid(
                options.kind(),
                format!(
                    "location {} is of kind {}; its kind cannot change",
                    current.name,
                    current.options.kind()
                ),
            ));
        }
        let moves_data = update
            .options
            .as_ref()
            .is_some_and(|options| options.data_place() != current.options.data_place());
        let mut updated = current.clone();
        if let Some(name) = update.name {
            updated.name = name;
        }
        if let Some(options) = update.options {
            updated.options = options;
        }
        if let Some(compression) = update.compression {
            updated.compression = compression;
        }
        if let Some(key) = update.encryption_key {
            if current.encryption_key.is_none() {
                // An encrypted location reads only sealed objects: its earlier backups, in the
                // clear, would no longer restore.
                return Err(Error::FailedPrecondition(format!(
                    "location {} is not encrypted, and cannot become so: create an encrypted \
                     location for encrypted backups",
                    current.name
                )));
            }
            updated.encryption_key = Some(key);
        }
        updated.update_time = SystemTime::now();
        self.catalog.update_location(&updated, moves_data).await?;
        tracing::info!(location = %updated.name, "updated location");
        Ok(updated)
    }

    /// Removes a location from the catalog (and the catalog's records of its backups); storage
    /// is left alone. Refused while a run uses it.
    pub async fn delete(&self, reference: &str) -> Result<()> {
        let location = self.get(reference).await?;
        self.catalog.delete_location(location.id, reference).await?;
        tracing::info!(location = %location.name, "deleted location");
        Ok(())
    }
}
