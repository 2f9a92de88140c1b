//! The scope each API method needs, in one table. A method the table does not name needs
//! ADMIN: a method added without a thought for its scope is closed, not open.

use serde::{Deserialize, Serialize};

/// What a token allows. Scopes nest: operate includes read, admin includes both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Operate,
    Admin,
}

impl Scope {
    /// Whether a token of this scope may call a method that needs `needed`.
    pub fn includes(self, needed: Scope) -> bool {
        self >= needed
    }

    /// Catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operate => "operate",
            Self::Admin => "admin",
        }
    }

    /// Parses the catalog spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "operate" => Some(Self::Operate),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Services open to anyone who reaches the port: health (load balancers, probes) and server
/// reflection (the schema is public: it is in the repository; grpcurl and `buf curl` need it
/// to build requests, which still carry a token).
const OPEN_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Methods of `coffer.v1` that only read.
const READ_METHODS: [&str; 14] = [
    "ClusterService/GetCluster",
    "ClusterService/ListClusters",
    "ClusterService/CheckCluster",
    "LocationService/GetLocation",
    "LocationService/ListLocations",
    "BackupService/GetBackup",
    "BackupService/ListBackups",
    "BackupService/ListBackupFiles",
    "RunService/GetRun",
    "RunService/ListRuns",
    "RunService/WatchRun",
    "ScheduleService/GetSchedule",
    "ScheduleService/ListSchedules",
    "ScheduleService/ListScheduleFires",
];

/// Methods of `coffer.v1` that start or cancel runs. (Deleting a backup loses data: admin.)
const OPERATE_METHODS: [&str; 7] = [
    "BackupService/StartBackup",
    // Writes, reads and deletes probe objects in the location.
    "LocationService/CheckLocation",
    "RestoreService/StartRestore",
    "RunService/CancelRun",
    "LocationService/ValidateLocation",
    "LocationService/PurgeLocation",
    "ScheduleService/RunSchedule",
];

/// The scope a call to `path` (`/package.Service/Method`) needs; `None` for the open services.
pub fn required_scope(path: &str) -> Option<Scope> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (service, _) = path.split_once('/').unwrap_or((path, ""));
    if OPEN_SERVICES.contains(&service) {
        return None;
    }
    if path == "coffer.v1.TokenService/WhoAmI" {
        return Some(Scope::Read);
    }
    let Some(method) = path.strip_prefix("coffer.v1.") else {
        return Some(Scope::Admin);
    };
    if READ_METHODS.contains(&method) {
        Some(Scope::Read)
    } else if OPERATE_METHODS.contains(&method) {
        Some(Scope::Operate)
    } else {
        Some(Scope::Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_need_their_scope_and_unknown_ones_need_admin() {
        assert_eq!(required_scope("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_scope("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            required_scope("/coffer.v1.RunService/WatchRun"),
            Some(Scope::Read)
        );
        assert_eq!(
            required_scope("/coffer.v1.BackupService/StartBackup"),
            Some(Scope::Operate)
        );
        assert_eq!(
            required_scope("/coffer.v1.ClusterService/RegisterCluster"),
            Some(Scope::Admin)
        );
        assert_eq!(
            required_scope("/coffer.v1.BackupService/DeleteBackup"),
            Some(Scope::Admin),
            "deleting a backup loses data"
        );
        assert_eq!(
            required_scope("/coffer.v1.TokenService/CreateToken"),
            Some(Scope::Admin)
        );
        assert_eq!(
            required_scope("/coffer.v1.TokenService/WhoAmI"),
            Some(Scope::Read)
        );
        assert_eq!(
            required_scope("/coffer.v1.NewService/Thing"),
            Some(Scope::Admin)
        );
        assert_eq!(required_scope("/other.Service/Get"), Some(Scope::Admin));
        assert_eq!(required_scope("garbage"), Some(Scope::Admin));
        assert!(Scope::Admin.includes(Scope::Read));
        assert!(Scope::Operate.includes(Scope::Read));
        assert!(!Scope::Read.includes(Scope::Operate));
        assert!(!Scope::Operate.includes(Scope::Admin));
    }
}
