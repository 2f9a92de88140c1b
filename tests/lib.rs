//! Helpers for Coffer's end-to-end tests: start the real binaries on loopback and talk to them.
//!
//! Processes bind `127.0.0.1:0` themselves and announce the bound address as their one line on
//! stdout; helpers read that line, so no test picks a port in advance or sleeps to wait for
//! readiness. Each process's log goes to a file in the test's temporary directory, or to the
//! terminal when `COFFER_TEST_LOG` is set (its value is used as `RUST_LOG`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use coffer_client::CofferClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longest wait for a process to announce its address or to exit after SIGTERM.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent's snapshots folder at the root of a data path.
const SNAPSHOTS_FOLDER: &str = ".coffer-snapshots";

/// The directory holding the workspace's binaries (`target/<profile>`), found from the test
/// executable's own path (`target/<profile>/deps/e2e-*`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("locate test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test does)",
        path.display()
    );
    path
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// A tool installed by `scripts/install-tools` into `.tools/bin`.
pub fn tool(name: &str) -> PathBuf {
    let path = repo_root().join(".tools/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-tools (scripts/test does)",
        path.display()
    );
    path
}

/// A running Coffer process that announced its address.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// The announced address, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Process {
    /// Starts `command` and waits for its `... listening on http://ADDR` line on stdout.
    pub async fn start(mut command: Command, log: &Path) -> Self {
        match std::env::var("COFFER_TEST_LOG") {
            Ok(filter) => {
                command.env("RUST_LOG", filter).stderr(Stdio::inherit());
            }
            Err(_) => {
                let file = std::fs::File::create(log).expect("create process log");
                command.env("RUST_LOG", "info").stderr(file);
            }
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn process");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let announced = tokio::time::timeout(STARTUP_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some((_, url)) = line.split_once(" listening on ") {
                    return Some(url.trim().to_string());
                }
            }
            None
        })
        .await
        .expect("process announced its address in time");
        // Keep draining stdout so the process never blocks on, or fails writing to, a full or
        // closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let Some(url) = announced else {
            let status = child.wait().await.expect("wait for process");
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("process exited ({status}) before announcing its address; log:\n{log}");
        };
        Self { child, url }
    }

    /// The announced address without the scheme, `127.0.0.1:PORT`.
    pub fn host_port(&self) -> &str {
        self.url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
    }

    /// Sends SIGTERM and waits for a clean exit; panics if the process fails or hangs.
    pub async fn stop(mut self) {
        let pid = self.child.id().expect("process is running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(STARTUP_TIMEOUT, self.child.wait())
            .await
            .expect("process exited after SIGTERM")
            .expect("wait for process");
        assert!(status.success(), "graceful shutdown exits 0, got {status}");
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill process");
    }
}

/// A node agent with its own data and state folders.
#[derive(Debug)]
pub struct TestAgent {
    /// The running agent.
    pub process: Process,
    /// Its data path.
    pub data: PathBuf,
    /// Its state directory.
    pub state: PathBuf,
}

impl TestAgent {
    /// Starts an agent whose folders live under `root/<name>`, on a free loopback port.
    pub async fn start(root: &Path, name: &str) -> Self {
        Self::start_on(root, name, "127.0.0.1:0").await
    }

    /// Starts an agent whose folders live under `root/<name>`, listening on `listen`.
    pub async fn start_on(root: &Path, name: &str, listen: &str) -> Self {
        Self::start_with(root, name, listen, &[]).await
    }

    /// Starts an agent with extra environment variables (storage credentials).
    pub async fn start_with_env(root: &Path, name: &str, env: &[(&str, &str)]) -> Self {
        Self::start_full(root, name, "127.0.0.1:0", &[], env).await
    }

    /// Starts an agent with extra command-line arguments (snapshot provider settings).
    pub async fn start_with(root: &Path, name: &str, listen: &str, extra: &[&str]) -> Self {
        Self::start_full(root, name, listen, extra, &[]).await
    }

    /// Starts an agent with storage secrets in its environment and `[[credentials]]` entries
    /// binding them to their endpoints and buckets (see [`credentials`]).
    pub async fn start_with_credentials(
        root: &Path,
        name: &str,
        env: &[(&str, &str)],
        credentials: &str,
    ) -> Self {
        let config = root.join(format!("{name}-agent.toml"));
        std::fs::write(&config, credentials).expect("write agent configuration");
        let config = config.display().to_string();
        Self::start_full(root, name, "127.0.0.1:0", &["--config", &config], env).await
    }

    /// Starts an agent whose folders live under `root/<name>`; fs locations may be anywhere
    /// under `root` (its storage root) but in its data and state folders.
    async fn start_full(
        root: &Path,
        name: &str,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let base = root.join(name);
        let data = base.join("data");
        let state = base.join("state");
        std::fs::create_dir_all(&data).expect("create agent data folder");
        let mut command = Command::new(binary("coffer-agent"));
        command
            .arg("--listen")
            .arg(listen)
            .arg("--data-path")
            .arg(&data)
            .arg("--state-dir")
            .arg(&state)
            .arg("--storage-root")
            .arg(root)
            .args(extra)
            .envs(env.iter().copied());
        let process = Process::start(command, &base.join("agent.log")).await;
        Self {
            process,
            data,
            state,
        }
    }

    /// The node id the agent keeps in its state directory.
    pub fn node_id(&self) -> String {
        std::fs::read_to_string(self.state.join("node-id"))
            .expect("read node id")
            .trim()
            .to_string()
    }
}

/// A test PKI under a folder: a CA, a server certificate for `127.0.0.1` and `localhost` signed
/// by it, a client certificate signed by it, and a second CA nobody trusts with a client
/// certificate of its own. Every file is PEM.
#[derive(Debug)]
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub stranger_ca: PathBuf,
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
    /// A server certificate for `127.0.0.1` from the untrusted CA (an impostor's).
    pub stranger_server_cert: PathBuf,
    pub stranger_server_key: PathBuf,
    /// A certificate of the trusted CA for another host only (`elsewhere.invalid`).
    pub elsewhere_cert: PathBuf,
    pub elsewhere_key: PathBuf,
}

impl TestPki {
    /// Makes the certificates under `dir`.
    pub fn new(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        std::fs::create_dir_all(dir).expect("pki folder");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca")
        };
        let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>,
                    names: &[&str],
                    usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(
                names
                    .iter()
                    .map(|name| name.to_string())
                    .collect::<Vec<_>>(),
            )
            .expect("params");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let trusted = ca("coffer test CA");
        let stranger = ca("somebody else's CA");
        let (server_cert, server_key) = leaf(
            &trusted,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&trusted, &["operator"], ExtendedKeyUsagePurpose::ClientAuth);
        let (stranger_cert, stranger_key) = leaf(
            &stranger,
            &["intruder"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (stranger_server_cert, stranger_server_key) = leaf(
            &stranger,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (elsewhere_cert, elsewhere_key) = leaf(
            &trusted,
            &["elsewhere.invalid"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        Self {
            ca: write("ca.pem", trusted.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            stranger_ca: write("stranger-ca.pem", stranger.pem()),
            stranger_cert: write("stranger.pem", stranger_cert),
            stranger_key: write("stranger.key", stranger_key),
            stranger_server_cert: write("stranger-server.pem", stranger_server_cert),
            stranger_server_key: write("stranger-server.key", stranger_server_key),
            elsewhere_cert: write("elsewhere.pem", elsewhere_cert),
            elsewhere_key: write("elsewhere.key", elsewhere_key),
        }
    }

    /// Client TLS settings trusting the CA, with the client certificate if `with_client`.
    pub fn client_tls(&self, with_client: bool) -> coffer_client::TlsSettings {
        coffer_client::TlsSettings {
            ca_pem: std::fs::read(&self.ca).expect("ca"),
            identity: with_client.then(|| {
                (
                    std::fs::read(&self.client_cert).expect("client cert"),
                    std::fs::read(&self.client_key).expect("client key"),
                )
            }),
        }
    }
}

/// One `[[credentials]]` entry of an agent's configuration: `secrets` (`env:NAME`) may be sent
/// to `endpoint` for `buckets`.
pub fn credentials(secrets: &[&str], endpoint: &str, buckets: &[&str]) -> String {
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|item| format!("{item:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[[credentials]]\nsecrets = [{}]\nendpoints = [{endpoint:?}]\nbuckets = [{}]\n\n",
        list(secrets),
        list(buckets)
    )
}

/// A Coffer server on a catalog file.
#[derive(Debug)]
pub struct TestServer {
    /// The running server.
    pub process: Process,
    /// Its catalog file.
    pub catalog: PathBuf,
    /// The admin token the server created at its first start (`root/admin.token`); `None`
    /// for a server started with `--auth none`.
    pub admin_token: Option<String>,
    /// How [`TestServer::client`] speaks TLS to it, for a server serving TLS.
    pub tls: Option<coffer_client::TlsSettings>,
}

impl TestServer {
    /// Starts a server with its catalog at `root/catalog.db`.
    pub async fn start(root: &Path) -> Self {
        Self::start_with(root, &[]).await
    }

    /// Starts a server with its catalog at `root/catalog.db` and extra command-line arguments;
    /// started again on the same `root`, it finds the catalog a previous one left. Tokens are
    /// on, as by default: the admin token the server writes to `root/admin.token` is read
    /// back for [`TestServer::client`] and [`TestServer::cofferctl`].
    pub async fn start_with(root: &Path, extra: &[&str]) -> Self {
        let catalog = root.join("catalog.db");
        let token_file = root.join("admin.token");
        let mut command = Command::new(binary("coffer-server"));
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--catalog")
            .arg(&catalog)
            .arg("--admin-token-file")
            .arg(&token_file)
            .arg("--agent-connect-timeout")
            .arg("2s")
            .arg("--agent-request-timeout")
            .arg("5s")
            .args(extra);
        let process = Process::start(command, &root.join("server.log")).await;
        let admin_token = std::fs::read_to_string(&token_file)
            .ok()
            .map(|token| token.trim().to_string())
            .filter(|token| {
                !token.is_empty() && !extra.windows(2).any(|pair| pair == ["--auth", "none"])
            });
        Self {
            process,
            catalog,
            admin_token,
            tls: None,
        }
    }

    /// A client connected to the server, presenting the admin token (and speaking TLS as
    /// [`TestServer::tls`] says).
    pub async fn client(&self) -> CofferClient {
        let client = CofferClient::connect_with(&self.process.url, self.tls.as_ref())
            .await
            .expect("connect to server");
        match &self.admin_token {
            Some(token) => client.with_token(token).expect("token"),
            None => client,
        }
    }

    /// A client connected to the server presenting no token.
    pub async fn anonymous_client(&self) -> CofferClient {
        CofferClient::connect_with(&self.process.url, self.tls.as_ref())
            .await
            .expect("connect to server")
    }

    /// `cofferctl` pointed at the server, presenting the admin token.
    pub fn cofferctl(&self) -> Command {
        let mut command = Command::new(binary("cofferctl"));
        command.env("COFFER_SERVER", self.process.host_port());
        command.env_remove("COFFER_TOKEN_FILE");
        match &self.admin_token {
            Some(token) => command.env("COFFER_TOKEN", token),
            None => command.env_remove("COFFER_TOKEN"),
        };
        command
    }
}

/// The time a server's scheduler reads (`--scheduler-clock-file`): tests move it to fire
/// schedules at chosen times without waiting for them.
#[derive(Debug)]
pub struct SchedulerClock {
    pub path: PathBuf,
}

impl SchedulerClock {
    /// A clock file at `root/scheduler-clock`, set to `ms`.
    pub fn new(root: &Path, ms: i64) -> Self {
        let clock = Self {
            path: root.join("scheduler-clock"),
        };
        clock.set(ms);
        clock
    }

    /// Sets the time, atomically (a server never reads half a number).
    pub fn set(&self, ms: i64) {
        let temporary = self.path.with_extension("tmp");
        std::fs::write(&temporary, format!("{ms}\n")).expect("write clock");
        std::fs::rename(&temporary, &self.path).expect("set clock");
    }

    /// The server arguments that make a scheduler read this clock, looking every 50 ms.
    pub fn server_args(&self) -> [&str; 4] {
        [
            "--scheduler-clock-file",
            self.path.to_str().expect("utf-8 path"),
            "--scheduler-tick",
            "50ms",
        ]
    }
}

/// Polls `check` every 50 ms until it gives a value, for at most 30 s; panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `address=` a process last logged on a line containing `what` (`metrics serving`,
/// `status page serving`), once it has.
pub async fn logged_address(log: &Path, what: &str) -> String {
    eventually(&format!("the log line '{what}'"), || async {
        let text = plain(&std::fs::read_to_string(log).ok()?);
        let line = text.lines().rev().find(|line| line.contains(what))?;
        let address = line.split("address=").nth(1)?.split_whitespace().next()?;
        Some(address.trim_matches('"').to_string())
    })
    .await
}

/// `text` without terminal colour codes (`ESC [ ... m`).
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for next in chars.by_ref() {
                if next == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A loopback address where nothing listens: bound, then released.
pub fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("local address");
    drop(listener);
    address.to_string()
}

/// The run `run_id` as GetRun answers it now.
pub async fn get_run(client: &CofferClient, run_id: &str) -> coffer_client::proto::Run {
    client
        .runs()
        .get_run(coffer_client::proto::GetRunRequest {
            run_id: run_id.to_string(),
        })
        .await
        .expect("get run")
        .into_inner()
        .run
        .expect("run")
}

/// Follows a run with WatchRun to its end; returns every state seen, the last one final.
pub async fn watch_to_end(client: &CofferClient, run_id: &str) -> Vec<coffer_client::proto::Run> {
    let mut stream = client
        .runs()
        .watch_run(coffer_client::proto::WatchRunRequest {
            run_id: run_id.to_string(),
            min_update_interval: None,
        })
        .await
        .expect("watch run")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(120), stream.message())
        .await
        .expect("run progresses")
        .expect("watch stream")
    {
        seen.push(message.run.expect("run in message"));
    }
    seen
}

/// Starts a backup of `kind` of `cluster` into `location` with default limits and follows it to
/// its end; returns the final run (whatever its state).
pub async fn run_backup(
    client: &CofferClient,
    cluster: &str,
    location: &str,
    kind: coffer_client::proto::BackupKind,
) -> coffer_client::proto::Run {
    use coffer_client::proto;
    let run_id = client
        .backups()
        .start_backup(proto::StartBackupRequest {
            cluster: cluster.into(),
            backup: Some(proto::BackupSpec {
                kind: kind.into(),
                location: location.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("start backup")
        .into_inner()
        .run_id;
    watch_to_end(client, &run_id).await.pop().expect("final")
}

/// Starts a full backup of `cluster` into `location` moving at most `bytes_per_second`, and
/// waits until its first bytes move; returns the run's id. For tests that act mid-run.
pub async fn start_throttled_backup(
    client: &CofferClient,
    cluster: &str,
    location: &str,
    bytes_per_second: i64,
) -> String {
    use coffer_client::proto;
    let run_id = client
        .backups()
        .start_backup(proto::StartBackupRequest {
            cluster: cluster.into(),
            backup: Some(proto::BackupSpec {
                kind: proto::BackupKind::Full.into(),
                location: location.into(),
                limits: Some(proto::TransferLimits {
                    rate_limit_bytes_per_second: bytes_per_second,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("start backup")
        .into_inner()
        .run_id;
    wait_until_bytes_move(client, &run_id).await;
    run_id
}

/// Waits until some node of run `run_id` has moved bytes.
pub async fn wait_until_bytes_move(client: &CofferClient, run_id: &str) {
    eventually("bytes to move", || async {
        let run = get_run(client, run_id).await;
        run.nodes
            .iter()
            .any(|node| {
                node.progress
                    .as_ref()
                    .is_some_and(|progress| progress.bytes_done > 0)
            })
            .then_some(())
    })
    .await;
}

/// Restores the backup `backup_id` onto `cluster` (its own nodes, no overwrite) and watches the
/// run to its end; returns the final run (whatever its state).
pub async fn run_restore(
    client: &CofferClient,
    cluster: &str,
    backup_id: &str,
) -> coffer_client::proto::Run {
    use coffer_client::proto;
    let run_id = client
        .restores()
        .start_restore(proto::StartRestoreRequest {
            cluster: cluster.into(),
            restore: Some(proto::RestoreSpec {
                source: Some(proto::restore_spec::Source::BackupId(backup_id.into())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("start restore")
        .into_inner()
        .run_id;
    watch_to_end(client, &run_id).await.pop().expect("final")
}

/// Creates a filesystem location named `name` at `path`.
pub async fn create_fs_location(client: &CofferClient, name: &str, path: &Path) {
    client
        .locations()
        .create_location(coffer_client::proto::CreateLocationRequest {
            name: name.to_string(),
            options: Some(coffer_client::proto::create_location_request::Options::Fs(
                coffer_client::proto::FsLocationOptions {
                    path: path.display().to_string(),
                },
            )),
            compression: None,
            encryption_key: Default::default(),
        })
        .await
        .expect("create location");
}

/// Writes `content` to `path`, creating its folders.
pub fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

/// `len` deterministic, random-looking (incompressible) bytes for `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// Empties the data path `data` (the folder stays), all but the agent's snapshots folder: the
/// agent may still be freeing the space of deleted snapshots there (see [`snapshots_left`]).
pub fn wipe(data: &Path) {
    for entry in std::fs::read_dir(data).expect("read data") {
        let path = entry.expect("entry").path();
        if path.file_name() == Some(std::ffi::OsStr::new(SNAPSHOTS_FOLDER)) {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("remove dir");
        } else {
            std::fs::remove_file(&path).expect("remove file");
        }
    }
}

/// What stays in the data path `data`'s `.coffer-snapshots` folder (names; empty when the folder
/// is gone) once the agent has freed the deleted snapshots: it detaches them at once and frees
/// their space in the background, within moments. Waits up to 10 s for detached folders to go.
pub async fn snapshots_left(data: &Path) -> Vec<String> {
    let folder = data.join(SNAPSHOTS_FOLDER);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> = std::fs::read_dir(&folder)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let freeing = names.iter().any(|name| name.starts_with(".removing-"));
        if !freeing || std::time::Instant::now() > deadline {
            return names;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every file below `root`, relative, with its content; for a data path, without the agent's
/// snapshots folder at its root (see [`snapshots_left`]).
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if dir == base && path.file_name() == Some(std::ffi::OsStr::new(SNAPSHOTS_FOLDER)) {
                continue;
            }
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let relative = path
                    .strip_prefix(base)
                    .expect("below base")
                    .display()
                    .to_string();
                out.insert(relative, std::fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

/// A running SeaweedFS (`weed mini`) S3 server on loopback, stopped when dropped.
///
/// `weed mini` cannot take a bound listener and opens ten ports: they are bound together, then
/// released and handed over (another process could take one in between; start-up then fails
/// with weed's log). Readiness is its S3 port answering HTTP.
#[derive(Debug)]
pub struct SeaweedFs {
    child: std::process::Child,
    log: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// A bucket that exists.
    pub bucket: String,
    /// Access key of the one identity.
    pub access_key: String,
    pub secret_key: String,
}

impl SeaweedFs {
    /// Starts `weed mini` with its data under `dir` and one bucket, `coffer`.
    pub async fn start(dir: &Path) -> Self {
        let weed = tool("weed");
        let listeners: Vec<std::net::TcpListener> = (0..10)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|listener| listener.local_addr().expect("local addr").port())
            .collect();
        drop(listeners);
        let data = dir.join("weed-data");
        std::fs::create_dir_all(&data).expect("weed data dir");
        let (access_key, secret_key) = (
            "coffer-test-key".to_string(),
            "coffer-test-secret".to_string(),
        );
        let credentials = dir.join("weed-s3.json");
        std::fs::write(
            &credentials,
            format!(
                r#"{{"identities":[{{"name":"coffer","credentials":[{{"accessKey":"{access_key}","secretKey":"{secret_key}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("write s3 credentials");
        let log = dir.join("weed.log");
        let log_file = std::fs::File::create(&log).expect("weed log");
        let bucket = "coffer".to_string();
        let child = std::process::Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-s3.config={}", credentials.display()))
            .arg(format!("-bucket={bucket}"))
            .arg(format!("-s3.port={}", ports[0]))
            .arg(format!("-s3.port.grpc={}", ports[1]))
            .arg(format!("-master.port={}", ports[2]))
            .arg(format!("-master.port.grpc={}", ports[3]))
            .arg(format!("-volume.port={}", ports[4]))
            .arg(format!("-volume.port.grpc={}", ports[5]))
            .arg(format!("-filer.port={}", ports[6]))
            .arg(format!("-filer.port.grpc={}", ports[7]))
            .arg(format!("-admin.port={}", ports[8]))
            .arg(format!("-admin.port.grpc={}", ports[9]))
            .arg(format!(
                "-filer.localSocket={}",
                dir.join("filer.sock").display()
            ))
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log"))
            .stderr(log_file)
            .spawn()
            .expect("start weed mini");
        let mut weed = Self {
            child,
            log,
            endpoint: format!("http://127.0.0.1:{}", ports[0]),
            bucket,
            access_key,
            secret_key,
        };
        weed.wait_ready(ports[0]).await;
        weed
    }

    async fn wait_ready(&mut self, port: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("weed mini exited ({status}); log:\n{}", self.log_tail());
            }
            // The bucket must exist: a HEAD of it answers once the filer and S3 gateway are up.
            if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                use tokio::io::AsyncWriteExt;
                let request = format!(
                    "HEAD /{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                    self.bucket
                );
                if stream.write_all(request.as_bytes()).await.is_ok() {
                    let mut answer = String::new();
                    let mut reader = BufReader::new(stream);
                    if reader.read_line(&mut answer).await.is_ok() && answer.starts_with("HTTP/1.1")
                    {
                        // 403 (unsigned) or 200: the gateway and the bucket answer.
                        if !answer.contains(" 404") && !answer.contains(" 503") {
                            return;
                        }
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "weed mini did not get ready; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) to a loopback port; returns the status code,
/// or `None` when nothing answers yet.
async fn http_status(port: u16, request: &str) -> Option<u16> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).await.ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// A loopback port that was free a moment ago, for emulators that cannot take a bound listener
/// (another process could take it in between: start-up then fails with the emulator's log).
fn released_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

/// The last lines of an emulator's log.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Polls `ready` every 100 ms until it says yes, failing with the log when the emulator exits
/// or 60 s pass.
async fn wait_until_ready<F, Fut>(child: &mut std::process::Child, log: &Path, what: &str, ready: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}); log:\n{}", log_tail(log));
        }
        if ready().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not get ready; log:\n{}",
            log_tail(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running Azurite blob service on loopback, with one container, stopped when dropped.
///
/// The container is created here, by the test, as an Azure operator creates theirs: Coffer
/// never creates containers (a location's container must exist, see `AzblobLocationOptions`).
#[derive(Debug)]
pub struct Azurite {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT/devstoreaccount1`.
    pub endpoint: String,
    /// The well-known emulator account.
    pub account_name: String,
    /// Its well-known key (base64).
    pub account_key: String,
    /// A container that exists.
    pub container: String,
}

impl Azurite {
    /// The account of every Azurite, with its published key.
    pub const ACCOUNT: &str = "devstoreaccount1";
    /// The published key of [`Azurite::ACCOUNT`].
    pub const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// Starts `azurite-blob` with its data under `dir` and creates the container `coffer`.
    pub async fn start(dir: &Path) -> Self {
        let port = released_port();
        let data = dir.join("azurite-data");
        std::fs::create_dir_all(&data).expect("azurite data dir");
        let log = dir.join("azurite.log");
        let log_file = std::fs::File::create(&log).expect("azurite log");
        let mut child = std::process::Command::new(tool("azurite-blob"))
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(port.to_string())
            .arg("--location")
            .arg(&data)
            .args([
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log"))
            .stderr(log_file)
            .spawn()
            .expect("start azurite-blob");
        let container = "coffer".to_string();
        // Ready once the container is created (201) or found (409 on a second try).
        let create = || async {
            let request = Self::create_container_request(port, "coffer");
            matches!(http_status(port, &request).await, Some(201 | 409))
        };
        wait_until_ready(&mut child, &log, "azurite-blob", create).await;
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}/{}", Self::ACCOUNT),
            account_name: Self::ACCOUNT.to_string(),
            account_key: Self::KEY.to_string(),
            container,
        }
    }

    /// A Create Container request signed with the account key (Shared Key authorization).
    fn create_container_request(port: u16, container: &str) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        let account = Self::ACCOUNT;
        let version = "2021-08-06";
        let date = httpdate(std::time::SystemTime::now());
        // Path-style emulator URLs put the account in the path, so it appears twice.
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
             /{account}/{account}/{container}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(Self::KEY)
            .expect("account key is base64");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("hmac key");
        mac.update(string_to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!(
            "PUT /{account}/{container}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {account}:{signature}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        )
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP date (RFC 7231 IMF-fixdate) of `time`.
fn httpdate(time: std::time::SystemTime) -> String {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {month_name} {year} {:02}:{:02}:{:02} GMT",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A running fake-gcs-server on loopback (plain HTTP, filesystem backend), with one bucket,
/// stopped when dropped.
#[derive(Debug)]
pub struct FakeGcs {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// A bucket that exists.
    pub bucket: String,
}

impl FakeGcs {
    /// Starts fake-gcs-server with its data under `dir` and the bucket `coffer` (a folder of its
    /// preload directory).
    pub async fn start(dir: &Path) -> Self {
        let port = released_port();
        let bucket = "coffer".to_string();
        let preload = dir.join("fake-gcs/preload");
        std::fs::create_dir_all(preload.join(&bucket)).expect("preload bucket dir");
        let store = dir.join("fake-gcs/store");
        let log = dir.join("fake-gcs.log");
        let log_file = std::fs::File::create(&log).expect("fake-gcs log");
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut child = std::process::Command::new(tool("fake-gcs-server"))
            .args(["-scheme", "http", "-host", "127.0.0.1", "-port"])
            .arg(port.to_string())
            .args(["-backend", "filesystem", "-filesystem-root"])
            .arg(&store)
            .arg("-data")
            .arg(&preload)
            .args(["-external-url", &endpoint, "-log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log"))
            .stderr(log_file)
            .spawn()
            .expect("start fake-gcs-server");
        let request = format!(
            "GET /storage/v1/b/{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        );
        let ready = || async { http_status(port, &request).await == Some(200) };
        wait_until_ready(&mut child, &log, "fake-gcs-server", ready).await;
        Self {
            child,
            endpoint,
            bucket,
        }
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
