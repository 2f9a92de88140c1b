//! `cofferctl location ...`: the commands of `coffer.v1.LocationService`.
//!
//! Credentials are given by reference only: each secret flag names an environment variable of the
//! agents (`--...-env VAR`) or a file on their hosts (`--...-file PATH`), which every agent
//! resolves when it opens the storage. No flag takes a secret's value, so no secret ever sits in
//! shell history, in the process list, or on the wire to the server.

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use coffer_client::proto;

use crate::cli::exit::EXIT_CODES_HELP;
use crate::cli::format::{self, NONE, or_none};
use crate::cli::output::OutputFormat;
use crate::cli::paging::{Page, PageArgs, fetch_pages};
use crate::cli::parse::{EnvVarNameParser, parse_absolute_path, parse_compression};
use crate::cli::table::{Table, fields};
use crate::cli::{CliError, Session};

/// The `location` commands.
#[derive(Debug, Subcommand)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub enum LocationCommand {
    /// Record a new location: a filesystem path, an S3 bucket, an Azure Blob container or a GCS
    /// bucket.
    ///
    /// The storage is not contacted: run `location check` to test that a cluster's agents can use
    /// it. Credentials are named by reference (an environment variable of the agents, or a file on
    /// their hosts), never given by value; without them the agents use their ambient credentials.
    Create(Box<CreateArgs>),
    /// List locations, by name.
    ///
    /// Fetches every page unless --page-size or --page-token is given; then prints that one page
    /// and the next page token on stderr.
    List(ListArgs),
    /// Show a location and its options.
    Show(LocationArgs),
    /// Rename a location or change its compression. Other options change through the API
    /// (UpdateLocation), since most of them must not change while backups are stored.
    Update(UpdateArgs),
    /// Remove a location from the catalog, with the catalog's records of the backups stored there.
    /// Nothing in the storage is touched.
    Delete(LocationArgs),
    /// Have every agent of a cluster write, read, list and delete a probe object at the location.
    ///
    /// Exits with code 8 when any step failed or did not run on any node, after printing every
    /// node's result.
    Check(CheckArgs),
    /// Rebuild the catalog from what the location holds (after losing the catalog, say):
    /// clusters with their ids, nodes and schedules, and every committed backup.
    ///
    /// Create the location first, with its settings. The server reads the location through the
    /// agent named by --via. What the catalog has already is left as it is, so importing twice
    /// changes nothing; a name that belongs to another cluster or schedule fails the import
    /// (exit 6) and changes nothing.
    Import(ImportArgs),
    /// Check what the location holds for a cluster's backups: one listing of its objects against
    /// every node manifest. Says per backup whether it restores (and which files lack their
    /// content), and how much a purge would free.
    ///
    /// Starts a validate run and prints its id; with --watch, follows it and prints the result,
    /// exiting 8 when a backup would not restore.
    Validate(ValidateArgs),
    /// Delete the objects of the location that no backup of the cluster refers to (what
    /// deleted backups held), without stopping backups: it deletes only while none of the
    /// cluster's backups at the location runs, and a backup that starts waits for at most one
    /// batch.
    ///
    /// Starts a purge run and prints its id; with --watch, follows it and prints what it freed.
    /// --dry-run reports what would be freed and deletes nothing.
    Purge(PurgeArgs),
}

/// Arguments of `location purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Name or id of the location.
    #[arg(value_name = "LOCATION", value_parser = non_empty())]
    pub location: String,
    /// Name or id of the cluster whose unreferenced objects are deleted; without it, every
    /// registered cluster's, one purge run after the other.
    #[arg(long, value_name = "CLUSTER", value_parser = non_empty())]
    pub cluster: Option<String>,
    /// Report what would be freed; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the run to its end.
    #[arg(long)]
    pub watch: bool,
}

/// Arguments of `location validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Name or id of the location.
    #[arg(value_name = "LOCATION", value_parser = non_empty())]
    pub location: String,
    /// Name or id of the cluster whose backups are checked.
    #[arg(long, value_name = "CLUSTER", value_parser = non_empty())]
    pub cluster: String,
    /// Also download objects and verify their BLAKE3 (all of them, or --sample of them).
    #[arg(long)]
    pub deep: bool,
    /// With --deep, verify this percent of the objects, those verified longest ago first:
    /// repeated sampled validations cover every object.
    #[arg(long, value_name = "PERCENT", requires = "deep",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub sample: Option<u32>,
    /// Follow the run to its end and exit by what it found.
    #[arg(long)]
    pub watch: bool,
}

/// Arguments of `location import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Name or id of the location.
    #[arg(value_name = "LOCATION", value_parser = non_empty())]
    pub location: String,
    /// Address of an agent that can reach the location (host:port).
    #[arg(long, value_name = "ADDR", value_parser = non_empty())]
    pub via: String,
}

/// Arguments of `location create`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("kind").required(true).args(["fs", "s3", "azblob", "gcs"])))]
pub struct CreateArgs {
    /// Name of the new location: lowercase letters, digits, '-' and '_', starting with a letter.
    pub name: String,
    /// A directory on the agents' hosts (the same shared filesystem on every node).
    #[arg(long, value_name = "PATH", value_parser = parse_absolute_path, help_heading = "Kind (one of)")]
    pub fs: Option<String>,
    /// An S3 bucket (Amazon S3 or an S3-compatible server).
    #[arg(long, value_name = "BUCKET", value_parser = non_empty(), help_heading = "Kind (one of)")]
    pub s3: Option<String>,
    /// An Azure Blob Storage container.
    #[arg(long, value_name = "CONTAINER", value_parser = non_empty(), help_heading = "Kind (one of)")]
    pub azblob: Option<String>,
    /// A Google Cloud Storage bucket.
    #[arg(long, value_name = "BUCKET", value_parser = non_empty(), help_heading = "Kind (one of)")]
    pub gcs: Option<String>,
    /// Endpoint URL of the service (S3-compatible servers, Azurite, GCS emulators).
    #[arg(long, value_name = "URL", value_parser = non_empty(), conflicts_with = "fs", help_heading = "Object storage")]
    pub endpoint: Option<String>,
    /// Key prefix under which Coffer keeps everything; empty means the bucket or container root.
    #[arg(
        long,
        value_name = "PREFIX",
        conflicts_with = "fs",
        help_heading = "Object storage"
    )]
    pub prefix: Option<String>,
    #[command(flatten)]
    pub s3_options: S3Args,
    #[command(flatten)]
    pub azblob_options: AzblobArgs,
    #[command(flatten)]
    pub gcs_options: GcsArgs,
    /// How the agents compress the objects they store: zstd (level 1, the default), zstd:LEVEL
    /// (-7 fastest to 12 smallest) or none (for data that does not compress, or storage cheaper
    /// than the agents' CPU).
    #[arg(long, value_name = "CODEC", value_parser = parse_compression)]
    pub compression: Option<proto::Compression>,
    /// Encrypt the location with the agents' key of this name: a `[[keys]]` entry in each
    /// agent's configuration, bound there to this location. Chosen once, at creation.
    #[arg(long, value_name = "KEY", value_parser = non_empty())]
    pub encryption_key: Option<String>,
}

/// Arguments of `location update`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args(["rename", "compression", "encryption_key"])))]
pub struct UpdateArgs {
    /// Name or id of the location.
    #[arg(value_name = "NAME_OR_ID", value_parser = non_empty())]
    pub location: String,
    /// New name.
    #[arg(long, value_name = "NAME", value_parser = non_empty())]
    pub rename: Option<String>,
    /// New compression for the objects stored from now on (objects already stored keep theirs):
    /// zstd, zstd:LEVEL or none.
    #[arg(long, value_name = "CODEC", value_parser = parse_compression)]
    pub compression: Option<proto::Compression>,
    /// Seal what is stored from now on with the agents' key of this name (a rotation of an
    /// encrypted location's key; keep the old key bound on the agents for the older backups).
    #[arg(long, value_name = "KEY", value_parser = non_empty())]
    pub encryption_key: Option<String>,
}

// The flags of one kind conflict with the other kinds rather than `requires` their own: clap
// counts a requirement on a member of the required `kind` group as met by any member.
const NOT_S3: [&str; 3] = ["fs", "azblob", "gcs"];
const NOT_AZBLOB: [&str; 3] = ["fs", "s3", "gcs"];
const NOT_GCS: [&str; 3] = ["fs", "s3", "azblob"];

/// The S3-only flags of `location create`.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("access_key_id").args(["access_key_id_env", "access_key_id_file"]).requires("secret_access_key")),
    group(ArgGroup::new("secret_access_key").args(["secret_access_key_env", "secret_access_key_file"]).requires("access_key_id")),
    group(ArgGroup::new("session_token").args(["session_token_env", "session_token_file"]).requires("access_key_id")),
)]
pub struct S3Args {
    /// Region of the bucket; default: the agents' environment, else us-east-1.
    #[arg(long, value_name = "REGION", value_parser = non_empty(), conflicts_with_all = NOT_S3, help_heading = "S3")]
    pub region: Option<String>,
    /// Address the bucket in the URL path rather than the host name (most S3-compatible servers).
    #[arg(long, conflicts_with_all = NOT_S3, help_heading = "S3")]
    pub path_style: bool,
    /// Agents' environment variable holding the access key id. Without a key pair, the agents use
    /// the default AWS credential chain.
    #[arg(long, value_name = "VAR", value_parser = EnvVarNameParser, conflicts_with_all = NOT_S3, help_heading = "S3")]
    pub access_key_id_env: Option<String>,
    /// File on the agents' hosts holding the access key id.
    #[arg(long, value_name = "PATH", value_parser = parse_absolute_path, conflicts_with_all = NOT_S3, help_heading = "S3")]
    pub access_key_id_file: Option<String>,
    /// Agents' environment variable holding the secret access key.
    #[arg(long, value_name = "VAR", value_parser = EnvVarNameParser, conflicts_with_all = NOT_S3, help_heading = "S3")]
    pub secret_access_key_env: Option<String>,
    /// File on the agents' hosts holding the secret access key.
    #[arg(long, value_name = "PATH", value_parser = parse_absolute_path, conflicts_with_all = NOT_S3, help_heading = "S3")]
    pub secret_access_key_file: Option<String>,
    /// Agents' environment variable holding a session token (temporary credentials).
    #[arg(long, value_name = "VAR", value_parser = EnvVarNameParser, conflicts_with_all = NOT_S3, help_heading = "S3")]
    pub session_token_env: Option<String>,
    /// File on the agents' hosts holding a session token.
    #[arg(long, value_name = "PATH", value_parser = parse_absolute_path, conflicts_with_all = NOT_S3, help_heading = "S3")]
    pub session_token_file: Option<String>,
}

/// The Azure-only flags of `location create`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("azblob_credential").args([
    "account_key_env",
    "account_key_file",
    "sas_token_env",
    "sas_token_file",
])))]
pub struct AzblobArgs {
    /// Storage account name; required unless --endpoint is given and a SAS token is used.
    #[arg(long, value_name = "ACCOUNT", value_parser = non_empty(), conflicts_with_all = NOT_AZBLOB, help_heading = "Azure Blob")]
    pub account_name: Option<String>,
    /// Agents' environment variable holding the shared account key. Without a key or SAS token,
    /// the agents use their ambient credentials.
    #[arg(long, value_name = "VAR", value_parser = EnvVarNameParser, conflicts_with_all = NOT_AZBLOB, help_heading = "Azure Blob")]
    pub account_key_env: Option<String>,
    /// File on the agents' hosts holding the shared account key.
    #[arg(long, value_name = "PATH", value_parser = parse_absolute_path, conflicts_with_all = NOT_AZBLOB, help_heading = "Azure Blob")]
    pub account_key_file: Option<String>,
    /// Agents' environment variable holding a SAS token (without the leading '?').
    #[arg(long, value_name = "VAR", value_parser = EnvVarNameParser, conflicts_with_all = NOT_AZBLOB, help_heading = "Azure Blob")]
    pub sas_token_env: Option<String>,
    /// File on the agents' hosts holding a SAS token.
    #[arg(long, value_name = "PATH", value_parser = parse_absolute_path, conflicts_with_all = NOT_AZBLOB, help_heading = "Azure Blob")]
    pub sas_token_file: Option<String>,
}

/// The GCS-only flags of `location create`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("gcs_credential").args([
    "credential_env",
    "credential_file",
    "anonymous",
])))]
pub struct GcsArgs {
    /// Agents' environment variable holding a service account key (the JSON key). Without it,
    /// the agents use Application Default Credentials.
    #[arg(long, value_name = "VAR", value_parser = EnvVarNameParser, conflicts_with_all = NOT_GCS, help_heading = "Google Cloud Storage")]
    pub credential_env: Option<String>,
    /// File on the agents' hosts holding a service account key (the JSON key file).
    #[arg(long, value_name = "PATH", value_parser = parse_absolute_path, conflicts_with_all = NOT_GCS, help_heading = "Google Cloud Storage")]
    pub credential_file: Option<String>,
    /// Send requests without credentials (public buckets, emulators).
    #[arg(long, conflicts_with_all = NOT_GCS, help_heading = "Google Cloud Storage")]
    pub anonymous: bool,
}

/// Arguments of `location list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only locations of this kind.
    #[arg(long, value_enum, value_name = "KIND")]
    pub kind: Option<LocationKindArg>,
    #[command(flatten)]
    pub pages: PageArgs,
}

/// A location kind on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LocationKindArg {
    Fs,
    S3,
    Azblob,
    Gcs,
}

impl From<LocationKindArg> for proto::LocationKind {
    fn from(kind: LocationKindArg) -> Self {
        match kind {
            LocationKindArg::Fs => Self::Fs,
            LocationKindArg::S3 => Self::S3,
            LocationKindArg::Azblob => Self::Azblob,
            LocationKindArg::Gcs => Self::Gcs,
        }
    }
}

/// A command that takes one location.
#[derive(Debug, Args)]
pub struct LocationArgs {
    /// Name or id of the location.
    #[arg(value_name = "NAME_OR_ID", value_parser = non_empty())]
    pub location: String,
}

/// Arguments of `location check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Name or id of the location.
    #[arg(value_name = "NAME_OR_ID", value_parser = non_empty())]
    pub location: String,
    /// Name or id of the cluster whose agents run the check.
    #[arg(long, value_name = "CLUSTER", value_parser = non_empty())]
    pub cluster: String,
}

fn non_empty() -> clap::builder::NonEmptyStringValueParser {
    clap::builder::NonEmptyStringValueParser::new()
}

/// Runs a `location` command.
pub async fn run(command: LocationCommand, session: &Session) -> Result<(), CliError> {
    match command {
        LocationCommand::Create(args) => create(*args, session).await,
        LocationCommand::List(args) => list(args, session).await,
        LocationCommand::Show(args) => show(args, session).await,
        LocationCommand::Update(args) => update(args, session).await,
        LocationCommand::Delete(args) => delete(args, session).await,
        LocationCommand::Check(args) => check(args, session).await,
        LocationCommand::Import(args) => import(args, session).await,
        LocationCommand::Validate(args) => validate(args, session).await,
        LocationCommand::Purge(args) => purge(args, session).await,
    }
}

async fn purge(args: PurgeArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let clusters = match &args.cluster {
        Some(cluster) => vec![cluster.clone()],
        None => every_cluster(&client).await?,
    };
    if clusters.is_empty() {
        session
            .output
            .note(format_args!("no cluster is registered: nothing to purge"));
        return Ok(());
    }
    // One purge per cluster (objects live under each cluster's folder), one after the other
    // when followed; a cluster whose purge cannot start or fails does not stop the others.
    let mut first_error = None;
    for cluster in clusters {
        let started = async {
            let response = client
                .locations()
                .purge_location(proto::PurgeLocationRequest {
                    location: args.location.clone(),
                    cluster: cluster.clone(),
                    dry_run: args.dry_run,
                })
                .await?
                .into_inner();
            let run_id = response.run_id.clone();
            crate::cli::watch::started(session, &client, &response, &run_id, args.watch, "purge")
                .await
        }
        .await;
        if let Err(error) = started {
            if args.cluster.is_none() {
                session
                    .output
                    .note(format_args!("cluster {cluster}: {error}"));
            }
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The ids of every registered cluster.
async fn every_cluster(client: &coffer_client::CofferClient) -> Result<Vec<String>, CliError> {
    let clusters = crate::cli::paging::all_pages(|page_token| {
        let mut clusters = client.clusters();
        let request = proto::ListClustersRequest {
            page_size: 0,
            page_token,
            labels: Default::default(),
        };
        async move {
            let page = clusters.list_clusters(request).await?.into_inner();
            Ok(Page {
                items: page.clusters,
                next_page_token: page.next_page_token,
            })
        }
    })
    .await?;
    Ok(clusters.into_iter().map(|cluster| cluster.id).collect())
}

async fn validate(args: ValidateArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .locations()
        .validate_location(proto::ValidateLocationRequest {
            location: args.location,
            cluster: args.cluster,
            depth: if args.deep {
                proto::ValidationDepth::Deep
            } else {
                proto::ValidationDepth::Quick
            }
            .into(),
            sample_percent: args.sample.unwrap_or(0),
        })
        .await?
        .into_inner();
    let run_id = response.run_id.clone();
    crate::cli::watch::started(
        session,
        &client,
        &response,
        &run_id,
        args.watch,
        "validation",
    )
    .await?;
    if !args.watch {
        return Ok(());
    }
    let run = client
        .runs()
        .get_run(proto::GetRunRequest { run_id })
        .await?
        .into_inner()
        .run
        .ok_or_else(|| CliError::Protocol("the response has no run".to_owned()))?;
    let backups = run
        .validation
        .map(|result| result.backups)
        .unwrap_or_default();
    let unrestorable = backups.iter().filter(|backup| !backup.restorable).count();
    if unrestorable > 0 {
        return Err(CliError::Unrestorable {
            unrestorable,
            total: backups.len(),
        });
    }
    Ok(())
}

async fn import(args: ImportArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .locations()
        .import_location(proto::ImportLocationRequest {
            location: args.location,
            agent: args.via,
        })
        .await?
        .into_inner();
    session.output.response(&response, |report| {
        let mut out = fields([
            (
                "Clusters",
                format!(
                    "{} imported, {} there already",
                    report.clusters_imported, report.clusters_matched
                ),
            ),
            (
                "Backups",
                format!(
                    "{} imported, {} there already, {} without a commit manifest (deleted or never committed)",
                    report.backups_imported, report.backups_present, report.backups_uncommitted
                ),
            ),
            (
                "Schedules",
                format!(
                    "{} imported, {} there already",
                    report.schedules_imported, report.schedules_present
                ),
            ),
        ]);
        for skipped in &report.skipped {
            out.push_str(&format!("Skipped: {skipped}\n"));
        }
        Ok(out)
    })
}

/// The request `location create` sends. clap has already made sure exactly one kind is given and
/// every other flag belongs to it.
pub fn create_request(args: CreateArgs) -> proto::CreateLocationRequest {
    use proto::create_location_request::Options;

    let CreateArgs {
        name,
        fs,
        s3,
        azblob,
        gcs,
        endpoint,
        prefix,
        s3_options,
        azblob_options,
        gcs_options,
        compression,
        encryption_key,
    } = args;
    let endpoint = endpoint.unwrap_or_default();
    let prefix = prefix.unwrap_or_default();
    let options = if let Some(path) = fs {
        Options::Fs(proto::FsLocationOptions { path })
    } else if let Some(bucket) = s3 {
        Options::S3(proto::S3LocationOptions {
            bucket,
            region: s3_options.region.unwrap_or_default(),
            endpoint,
            prefix,
            force_path_style: s3_options.path_style,
            access_key_id: secret_ref(s3_options.access_key_id_env, s3_options.access_key_id_file),
            secret_access_key: secret_ref(
                s3_options.secret_access_key_env,
                s3_options.secret_access_key_file,
            ),
            session_token: secret_ref(s3_options.session_token_env, s3_options.session_token_file),
        })
    } else if let Some(container) = azblob {
        Options::Azblob(proto::AzblobLocationOptions {
            container,
            endpoint,
            account_name: azblob_options.account_name.unwrap_or_default(),
            prefix,
            account_key: secret_ref(
                azblob_options.account_key_env,
                azblob_options.account_key_file,
            ),
            sas_token: secret_ref(azblob_options.sas_token_env, azblob_options.sas_token_file),
        })
    } else {
        Options::Gcs(proto::GcsLocationOptions {
            bucket: gcs.unwrap_or_default(),
            endpoint,
            prefix,
            credential: secret_ref(gcs_options.credential_env, gcs_options.credential_file),
            anonymous: gcs_options.anonymous,
        })
    };
    proto::CreateLocationRequest {
        name,
        options: Some(options),
        compression,
        encryption_key: encryption_key.unwrap_or_default(),
    }
}

/// A secret reference from an `--...-env` / `--...-file` pair, of which clap lets at most one
/// through.
fn secret_ref(env: Option<String>, file: Option<String>) -> Option<proto::SecretRef> {
    use proto::secret_ref::Source;

    let source = match (env, file) {
        (Some(variable), _) => Source::Env(variable),
        (None, Some(path)) => Source::File(path),
        (None, None) => return None,
    };
    Some(proto::SecretRef {
        source: Some(source),
    })
}

async fn create(args: CreateArgs, session: &Session) -> Result<(), CliError> {
    let request = create_request(args);
    let client = session.connect().await?;
    let response = client
        .locations()
        .create_location(request)
        .await?
        .into_inner();
    session.output.response(&response, |response| {
        Ok(render_location(required_location(
            response.location.as_ref(),
        )?))
    })
}

async fn list(args: ListArgs, session: &Session) -> Result<(), CliError> {
    let kind = args
        .kind
        .map_or(proto::LocationKind::Unspecified, Into::into) as i32;
    let client = session.connect().await?;
    let locations = client.locations();
    let page = fetch_pages(args.pages, |page_size, page_token| {
        let mut locations = locations.clone();
        let request = proto::ListLocationsRequest {
            page_size,
            page_token,
            kind,
        };
        async move {
            let page = locations.list_locations(request).await?.into_inner();
            Ok(Page {
                items: page.locations,
                next_page_token: page.next_page_token,
            })
        }
    })
    .await?;
    let response = proto::ListLocationsResponse {
        locations: page.items,
        next_page_token: page.next_page_token,
    };
    session.output.list(
        &response,
        "locations",
        response.locations.len(),
        &response.next_page_token,
        "no locations found",
        |response| render_location_list(&response.locations),
    )
}

async fn show(args: LocationArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .locations()
        .get_location(proto::GetLocationRequest {
            location: args.location,
        })
        .await?
        .into_inner();
    session.output.response(&response, |response| {
        Ok(render_location(required_location(
            response.location.as_ref(),
        )?))
    })
}

async fn update(args: UpdateArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .locations()
        .update_location(proto::UpdateLocationRequest {
            location: args.location,
            name: args.rename,
            options: None,
            compression: args.compression,
            encryption_key: args.encryption_key,
        })
        .await?
        .into_inner();
    session.output.response(&response, |response| {
        Ok(render_location(required_location(
            response.location.as_ref(),
        )?))
    })
}

async fn delete(args: LocationArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .locations()
        .delete_location(proto::DeleteLocationRequest {
            location: args.location.clone(),
        })
        .await?
        .into_inner();
    match session.output.format() {
        OutputFormat::Json => session.output.response(&response, |_| Ok(String::new()))?,
        OutputFormat::Table => session
            .output
            .note(format_args!("deleted location {}", args.location)),
    }
    Ok(())
}

async fn check(args: CheckArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .locations()
        .check_location(proto::CheckLocationRequest {
            location: args.location,
            cluster: args.cluster,
        })
        .await?
        .into_inner();
    session
        .output
        .response(&response, |response| Ok(render_check(&response.nodes)))?;
    let failed = response
        .nodes
        .iter()
        .filter(|node| !node_check_passed(node))
        .count();
    if failed > 0 || !response.ok {
        return Err(CliError::LocationCheckFailed {
            failed,
            total: response.nodes.len(),
        });
    }
    Ok(())
}

/// The location a response must carry.
fn required_location(location: Option<&proto::Location>) -> Result<&proto::Location, CliError> {
    location.ok_or_else(|| CliError::Protocol("the response has no location".to_owned()))
}

/// `FS`, `S3`, `AZBLOB`, `GCS`.
fn kind_name(kind: i32) -> String {
    format::enum_name(
        kind,
        proto::LocationKind::try_from(kind)
            .ok()
            .map(|kind| kind.as_str_name()),
        "LOCATION_KIND_",
    )
}

/// Where a location keeps its data, as one short string: `/mnt/backups`,
/// `s3://bucket/prefix`, `azblob://container/prefix`, `gs://bucket/prefix`.
fn target(location: &proto::Location) -> String {
    use proto::location::Options;

    let url = |scheme: &str, bucket: &str, prefix: &str| {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("{scheme}://{bucket}")
        } else {
            format!("{scheme}://{bucket}/{prefix}")
        }
    };
    match &location.options {
        Some(Options::Fs(fs)) => fs.path.clone(),
        Some(Options::S3(s3)) => url("s3", &s3.bucket, &s3.prefix),
        Some(Options::Azblob(azblob)) => url("azblob", &azblob.container, &azblob.prefix),
        Some(Options::Gcs(gcs)) => url("gs", &gcs.bucket, &gcs.prefix),
        None => NONE.to_owned(),
    }
}

/// A secret reference as `env:VAR` or `file:/path`; `default` when unset.
fn reference(secret: Option<&proto::SecretRef>, default: &str) -> String {
    use proto::secret_ref::Source;

    match secret.and_then(|secret| secret.source.as_ref()) {
        Some(Source::Env(variable)) => format!("env:{variable}"),
        Some(Source::File(path)) => format!("file:{path}"),
        None => default.to_owned(),
    }
}

/// `location list`: one row per location.
fn render_location_list(locations: &[proto::Location]) -> String {
    let mut table = Table::new(["NAME", "ID", "KIND", "TARGET", "COMPRESSION", "CREATED"]);
    for location in locations {
        table.push([
            location.name.clone(),
            location.id.clone(),
            kind_name(location.kind),
            target(location),
            compression_name(location.compression.as_ref()),
            format::timestamp(location.create_time.as_ref()),
        ]);
    }
    table.render()
}

/// `location show` (and create): every field, credentials by reference.
fn render_location(location: &proto::Location) -> String {
    use proto::location::Options;

    let mut rows = vec![
        ("Name", location.name.clone()),
        ("ID", location.id.clone()),
        ("Kind", kind_name(location.kind)),
    ];
    match &location.options {
        Some(Options::Fs(fs)) => rows.push(("Path", fs.path.clone())),
        Some(Options::S3(s3)) => rows.extend([
            ("Bucket", s3.bucket.clone()),
            ("Region", or_none(&s3.region)),
            ("Endpoint", or_none(&s3.endpoint)),
            ("Prefix", or_none(&s3.prefix)),
            ("Path style", yes_no(s3.force_path_style)),
            (
                "Access key id",
                reference(s3.access_key_id.as_ref(), "default AWS credential chain"),
            ),
            (
                "Secret access key",
                reference(s3.secret_access_key.as_ref(), NONE),
            ),
            ("Session token", reference(s3.session_token.as_ref(), NONE)),
        ]),
        Some(Options::Azblob(azblob)) => rows.extend([
            ("Container", azblob.container.clone()),
            ("Account", or_none(&azblob.account_name)),
            ("Endpoint", or_none(&azblob.endpoint)),
            ("Prefix", or_none(&azblob.prefix)),
            ("Account key", reference(azblob.account_key.as_ref(), NONE)),
            ("SAS token", reference(azblob.sas_token.as_ref(), NONE)),
        ]),
        Some(Options::Gcs(gcs)) => rows.extend([
            ("Bucket", gcs.bucket.clone()),
            ("Endpoint", or_none(&gcs.endpoint)),
            ("Prefix", or_none(&gcs.prefix)),
            (
                "Credential",
                if gcs.anonymous {
                    "anonymous".to_owned()
                } else {
                    reference(gcs.credential.as_ref(), "Application Default Credentials")
                },
            ),
        ]),
        None => rows.push(("Options", NONE.to_owned())),
    }
    rows.extend([
        (
            "Compression",
            compression_name(location.compression.as_ref()),
        ),
        ("Encryption key", or_none(&location.encryption_key)),
        ("Created", format::timestamp(location.create_time.as_ref())),
        ("Updated", format::timestamp(location.update_time.as_ref())),
    ]);
    fields(rows)
}

/// A location's compression as `location create --compression` takes it.
fn compression_name(compression: Option<&proto::Compression>) -> String {
    match compression {
        None => NONE.to_owned(),
        Some(compression) => match compression.codec() {
            proto::CompressionCodec::None => "none".to_owned(),
            proto::CompressionCodec::Zstd | proto::CompressionCodec::Unspecified => {
                // 0 is the default level, 1; negative levels are real ones.
                format!(
                    "zstd:{}",
                    if compression.level == 0 {
                        1
                    } else {
                        compression.level
                    }
                )
            }
        },
    }
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// Whether every step ran and worked on a node.
fn node_check_passed(node: &proto::LocationNodeCheck) -> bool {
    node.error_message.is_empty()
        && steps(node).iter().all(|(_, step)| {
            step.is_some_and(|step| step.status() == proto::LocationCheckStatus::Ok)
        })
}

/// The steps of a node's check, in the order they run.
fn steps(
    node: &proto::LocationNodeCheck,
) -> [(&'static str, Option<&proto::LocationCheckStep>); 4] {
    [
        ("write", node.write.as_ref()),
        ("read", node.read.as_ref()),
        ("list", node.list.as_ref()),
        ("delete", node.delete.as_ref()),
    ]
}

/// A step's cell: `ok 12.3ms`, `FAILED`, `SKIPPED`.
fn step_cell(step: Option<&proto::LocationCheckStep>) -> String {
    let Some(step) = step else {
        return NONE.to_owned();
    };
    match proto::LocationCheckStatus::try_from(step.status) {
        Ok(proto::LocationCheckStatus::Ok) => match step.latency.as_ref() {
            Some(latency) => format!("ok {}", format::duration(Some(latency))),
            None => "ok".to_owned(),
        },
        _ => format::enum_name(
            step.status,
            proto::LocationCheckStatus::try_from(step.status)
                .ok()
                .map(|status| status.as_str_name()),
            "LOCATION_CHECK_STATUS_",
        ),
    }
}

/// `location check`: one row per node, one column per step, then why it failed.
fn render_check(nodes: &[proto::LocationNodeCheck]) -> String {
    let mut table = Table::new([
        "NODE ID", "ADDRESS", "WRITE", "READ", "LIST", "DELETE", "MESSAGE",
    ]);
    for node in nodes {
        let message = if node.error_message.is_empty() {
            steps(node)
                .iter()
                .filter_map(|(name, step)| {
                    let step = step.filter(|step| !step.error_message.is_empty())?;
                    Some(format!("{name}: {}", step.error_message))
                })
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            node.error_message.clone()
        };
        let [write, read, list, delete] = steps(node).map(|(_, step)| step_cell(step));
        table.push([
            node.node_id.clone(),
            node.address.clone(),
            write,
            read,
            list,
            delete,
            message,
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<CreateArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            ["cofferctl", "location", "create"]
                .iter()
                .chain(args)
                .copied(),
        )?;
        match cli.command {
            Command::Location(LocationCommand::Create(args)) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn env(variable: &str) -> Option<proto::SecretRef> {
        Some(proto::SecretRef {
            source: Some(proto::secret_ref::Source::Env(variable.to_owned())),
        })
    }

    fn file(path: &str) -> Option<proto::SecretRef> {
        Some(proto::SecretRef {
            source: Some(proto::secret_ref::Source::File(path.to_owned())),
        })
    }

    #[test]
    fn s3_command_line_becomes_s3_options_with_references() {
        let args = parse(&[
            "backups",
            "--s3",
            "coffer-backups",
            "--region",
            "eu-west-1",
            "--endpoint",
            "http://minio:9000",
            "--prefix",
            "prod/",
            "--path-style",
            "--access-key-id-env",
            "MINIO_ACCESS_KEY",
            "--secret-access-key-file",
            "/etc/coffer/minio-secret",
        ])
        .expect("valid command line");
        let request = create_request(args);
        assert_eq!(
            request,
            proto::CreateLocationRequest {
                name: "backups".to_owned(),
                compression: None,
                options: Some(proto::create_location_request::Options::S3(
                    proto::S3LocationOptions {
                        bucket: "coffer-backups".to_owned(),
                        region: "eu-west-1".to_owned(),
                        endpoint: "http://minio:9000".to_owned(),
                        prefix: "prod/".to_owned(),
                        force_path_style: true,
                        access_key_id: env("MINIO_ACCESS_KEY"),
                        secret_access_key: file("/etc/coffer/minio-secret"),
                        session_token: None,
                    }
                )),
                encryption_key: Default::default(),
            }
        );
    }

    #[test]
    fn fs_azblob_and_gcs_command_lines() {
        let request = create_request(parse(&["local", "--fs", "/mnt/backups"]).expect("fs"));
        assert_eq!(
            request.options,
            Some(proto::create_location_request::Options::Fs(
                proto::FsLocationOptions {
                    path: "/mnt/backups".to_owned()
                }
            ))
        );

        let request = create_request(
            parse(&[
                "azure",
                "--azblob",
                "coffer",
                "--account-name",
                "acct",
                "--sas-token-env",
                "AZ_SAS",
            ])
            .expect("azblob"),
        );
        assert_eq!(
            request.options,
            Some(proto::create_location_request::Options::Azblob(
                proto::AzblobLocationOptions {
                    container: "coffer".to_owned(),
                    account_name: "acct".to_owned(),
                    sas_token: env("AZ_SAS"),
                    ..Default::default()
                }
            ))
        );

        let request = create_request(
            parse(&[
                "gcs",
                "--gcs",
                "bkt",
                "--endpoint",
                "http://fake-gcs:4443",
                "--anonymous",
            ])
            .expect("gcs"),
        );
        assert_eq!(
            request.options,
            Some(proto::create_location_request::Options::Gcs(
                proto::GcsLocationOptions {
                    bucket: "bkt".to_owned(),
                    endpoint: "http://fake-gcs:4443".to_owned(),
                    anonymous: true,
                    ..Default::default()
                }
            ))
        );
    }

    #[test]
    fn flags_of_another_kind_and_half_credentials_are_usage_errors() {
        for bad in [
            &["x"][..],
            &["x", "--fs", "/a", "--s3", "b"],
            &["x", "--fs", "relative/path"],
            &["x", "--fs", "/a", "--region", "eu"],
            &["x", "--fs", "/a", "--endpoint", "http://e"],
            &["x", "--gcs", "b", "--region", "eu"],
            &["x", "--s3", "b", "--anonymous"],
            &["x", "--s3", "b", "--access-key-id-env", "A"],
            &["x", "--s3", "b", "--secret-access-key-env", "S"],
            &[
                "x",
                "--s3",
                "b",
                "--access-key-id-env",
                "A",
                "--access-key-id-file",
                "/a",
                "--secret-access-key-env",
                "S",
            ],
            &[
                "x",
                "--s3",
                "b",
                "--access-key-id-env",
                "not/a/name",
                "--secret-access-key-env",
                "S",
            ],
            &[
                "x",
                "--s3",
                "b",
                "--access-key-id-file",
                "key",
                "--secret-access-key-env",
                "S",
            ],
            &[
                "x",
                "--azblob",
                "c",
                "--account-key-env",
                "K",
                "--sas-token-env",
                "T",
            ],
            &["x", "--gcs", "b", "--credential-env", "C", "--anonymous"],
            &["x", "--s3", "b", "--secret-access-key", "wJalrXUtnFEMI"],
        ] {
            let error = parse(bad).expect_err(&format!("{bad:?} should be rejected"));
            assert_eq!(error.exit_code(), 2, "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_secret_given_for_a_variable_name_is_not_echoed() {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY";
        let error = parse(&[
            "x",
            "--s3",
            "b",
            "--access-key-id-env",
            "A",
            "--secret-access-key-env",
            secret,
        ])
        .expect_err("not a variable name");
        assert_eq!(error.exit_code(), 2);
        let message = error.to_string();
        assert!(message.contains("--secret-access-key-env"), "{message}");
        assert!(!message.contains(secret), "{message}");
    }

    #[test]
    fn show_renders_references_never_values() {
        let location = proto::Location {
            id: "l-1".to_owned(),
            name: "backups".to_owned(),
            kind: proto::LocationKind::S3 as i32,
            options: Some(proto::location::Options::S3(proto::S3LocationOptions {
                bucket: "coffer-backups".to_owned(),
                prefix: "prod".to_owned(),
                access_key_id: env("AWS_ACCESS_KEY_ID"),
                secret_access_key: file("/etc/coffer/secret"),
                ..Default::default()
            })),
            compression: Some(proto::Compression {
                codec: proto::CompressionCodec::Zstd as i32,
                level: -3,
            }),
            ..Default::default()
        };
        assert_eq!(
            render_location(&location),
            "Name:               backups\n\
             ID:                 l-1\n\
             Kind:               S3\n\
             Bucket:             coffer-backups\n\
             Region:             -\n\
             Endpoint:           -\n\
             Prefix:             prod\n\
             Path style:         no\n\
             Access key id:      env:AWS_ACCESS_KEY_ID\n\
             Secret access key:  file:/etc/coffer/secret\n\
             Session token:      -\n\
             Compression:        zstd:-3\n\
             Encryption key:     -\n\
             Created:            -\n\
             Updated:            -\n"
        );
        assert_eq!(
            render_location_list(&[location]),
            "NAME      ID    KIND   TARGET                     COMPRESSION   CREATED\n\
             backups   l-1   S3     s3://coffer-backups/prod   zstd:-3       -\n"
        );
    }

    #[test]
    fn check_shows_each_step_and_why_it_failed() {
        let step = |status: proto::LocationCheckStatus, error: &str, millis: Option<i32>| {
            Some(proto::LocationCheckStep {
                status: status as i32,
                error_message: error.to_owned(),
                latency: millis.map(|millis| prost_types::Duration {
                    seconds: 0,
                    nanos: millis * 1_000_000,
                }),
            })
        };
        let ok = proto::LocationNodeCheck {
            node_id: "a".to_owned(),
            address: "http://a:7070".to_owned(),
            write: step(proto::LocationCheckStatus::Ok, "", Some(12)),
            read: step(proto::LocationCheckStatus::Ok, "", Some(3)),
            list: step(proto::LocationCheckStatus::Ok, "", Some(4)),
            delete: step(proto::LocationCheckStatus::Ok, "", None),
            ..Default::default()
        };
        let denied = proto::LocationNodeCheck {
            node_id: "b".to_owned(),
            address: "http://b:7070".to_owned(),
            write: step(proto::LocationCheckStatus::Failed, "access denied", Some(5)),
            read: step(proto::LocationCheckStatus::Skipped, "", None),
            list: step(proto::LocationCheckStatus::Skipped, "", None),
            delete: step(proto::LocationCheckStatus::Skipped, "", None),
            ..Default::default()
        };
        let unreachable = proto::LocationNodeCheck {
            node_id: "c".to_owned(),
            address: "http://c:7070".to_owned(),
            error_message: "agent unreachable".to_owned(),
            ..Default::default()
        };
        assert!(node_check_passed(&ok));
        assert!(!node_check_passed(&denied));
        assert!(!node_check_passed(&unreachable));
        assert_eq!(
            render_check(&[ok, denied, unreachable]),
            "NODE ID   ADDRESS         WRITE       READ       LIST       DELETE    MESSAGE\n\
             a         http://a:7070   ok 12.0ms   ok 3.0ms   ok 4.0ms   ok\n\
             b         http://b:7070   FAILED      SKIPPED    SKIPPED    SKIPPED   write: access denied\n\
             c         http://c:7070   -           -          -          -         agent unreachable\n"
        );
    }
}
