//! Tokens and scopes with the real binaries: no token, a malformed, forged, expired or revoked
//! one is UNAUTHENTICATED; a token without the scope is PERMISSION_DENIED; runs record who
//! started them; secrets are stored only hashed and never logged; cofferctl presents
//! COFFER_TOKEN and exits 12 or 13; `--auth none` lets anyone in, as asked.

use std::time::Duration;

use coffer_client::{CofferClient, proto};
use coffer_tests::{TestAgent, TestServer, create_fs_location, get_run, write};
use tonic::Code;

use crate::{node, register};

async fn create_token(
    admin: &CofferClient,
    name: &str,
    scope: proto::TokenScope,
    expire_after: Option<Duration>,
) -> String {
    admin
        .tokens()
        .create_token(proto::CreateTokenRequest {
            name: name.into(),
            scope: scope.into(),
            expire_after: expire_after.map(|after| after.try_into().expect("duration")),
        })
        .await
        .expect("create token")
        .into_inner()
        .secret
}

async fn as_token(server: &TestServer, secret: &str) -> CofferClient {
    server
        .anonymous_client()
        .await
        .with_token(secret)
        .expect("token")
}

async fn list_clusters(client: &CofferClient) -> Result<usize, tonic::Status> {
    client
        .clusters()
        .list_clusters(proto::ListClustersRequest::default())
        .await
        .map(|response| response.into_inner().clusters.len())
}

fn backup_request() -> proto::StartBackupRequest {
    proto::StartBackupRequest {
        cluster: "prod".into(),
        backup: Some(proto::BackupSpec {
            kind: proto::BackupKind::Full.into(),
            location: "vault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn calls_need_a_valid_token_with_the_scope_and_runs_record_who_started_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    write(&agent.data.join("db/data"), b"rows\n");
    let server = TestServer::start(root.path()).await;
    let admin_secret = server
        .admin_token
        .clone()
        .expect("an admin token at first start");
    let admin = server.client().await;
    admin
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register as admin");
    create_fs_location(&admin, "vault", &root.path().join("vault")).await;

    // No token, a malformed one, a forged one: UNAUTHENTICATED, naming no secret.
    let anonymous = server.anonymous_client().await;
    let status = list_clusters(&anonymous).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    assert!(status.message().contains("Bearer"), "{}", status.message());
    for bad in ["nonsense", "coffer_0123_abc"] {
        let status = list_clusters(&as_token(&server, bad).await)
            .await
            .expect_err("malformed");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let mut forged = admin_secret.clone();
    let last = forged.pop().expect("a character");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let status = list_clusters(&as_token(&server, &forged).await)
        .await
        .expect_err("forged: the right id, another secret");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Scopes: read reads only; operate starts runs but changes nothing else.
    let reader_secret = create_token(&admin, "reader", proto::TokenScope::Read, None).await;
    let operator_secret = create_token(&admin, "ops", proto::TokenScope::Operate, None).await;
    let reader = as_token(&server, &reader_secret).await;
    let operator = as_token(&server, &operator_secret).await;
    assert_eq!(list_clusters(&reader).await.expect("read"), 1);
    let status = reader
        .backups()
        .start_backup(backup_request())
        .await
        .expect_err("read cannot start a backup");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    assert!(status.message().contains("operate"), "{}", status.message());
    for status in [
        operator
            .clusters()
            .register_cluster(register("other", vec![node(&agent)]))
            .await
            .expect_err("operate cannot register"),
        operator
            .tokens()
            .create_token(proto::CreateTokenRequest {
                name: "escalate".into(),
                scope: proto::TokenScope::Admin.into(),
                expire_after: None,
            })
            .await
            .expect_err("operate cannot make tokens"),
    ] {
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{}",
            status.message()
        );
    }
    let run_id = operator
        .backups()
        .start_backup(backup_request())
        .await
        .expect("operate starts a backup")
        .into_inner()
        .run_id;
    let run = coffer_tests::watch_to_end(&reader, &run_id)
        .await
        .pop()
        .expect("final");
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    assert_eq!(run.started_by, "token:ops");
    let status = operator
        .backups()
        .delete_backup(proto::DeleteBackupRequest {
            backup_id: run.backup_id.clone(),
        })
        .await
        .expect_err("deleting a backup loses data: admin only");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    assert_eq!(get_run(&admin, &run_id).await.started_by, "token:ops");

    let me = reader
        .tokens()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner()
        .token
        .expect("a token");
    assert_eq!(
        (me.name.as_str(), me.scope()),
        ("reader", proto::TokenScope::Read)
    );

    // Expiry and revocation. (Five seconds: a loaded machine must not expire it before its
    // first use.)
    let brief = admin
        .tokens()
        .create_token(proto::CreateTokenRequest {
            name: "brief".into(),
            scope: proto::TokenScope::Admin.into(),
            expire_after: Some(Duration::from_secs(5).try_into().expect("duration")),
        })
        .await
        .expect("create a brief token")
        .into_inner();
    let expire_time = brief
        .token
        .as_ref()
        .and_then(|token| token.expire_time)
        .expect("an expiry");
    let brief = brief.secret;
    let brief_client = as_token(&server, &brief).await;
    assert_eq!(list_clusters(&brief_client).await.expect("fresh"), 1);
    let expires = std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(expire_time.seconds).expect("after 1970"),
            u32::try_from(expire_time.nanos).expect("nanos"),
        );
    if let Ok(left) = expires.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(200)).await;
    }
    let status = list_clusters(&brief_client).await.expect_err("expired");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
    admin
        .tokens()
        .revoke_token(proto::RevokeTokenRequest {
            token: "ops".into(),
        })
        .await
        .expect("revoke");
    let status = list_clusters(&operator).await.expect_err("revoked");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Bad requests to the token API.
    for (request, code) in [
        (
            proto::CreateTokenRequest {
                name: "reader".into(),
                scope: proto::TokenScope::Read.into(),
                expire_after: None,
            },
            Code::AlreadyExists,
        ),
        (
            proto::CreateTokenRequest {
                name: "noscope".into(),
                scope: 0,
                expire_after: None,
            },
            Code::InvalidArgument,
        ),
        (
            proto::CreateTokenRequest {
                name: "Bad Name".into(),
                scope: proto::TokenScope::Read.into(),
                expire_after: None,
            },
            Code::InvalidArgument,
        ),
    ] {
        let status = admin
            .tokens()
            .create_token(request)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
    }
    let status = admin
        .tokens()
        .revoke_token(proto::RevokeTokenRequest {
            token: "nobody".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);

    // Listed without secrets; stored only hashed; never logged.
    let listed = admin
        .tokens()
        .list_tokens(proto::ListTokensRequest {})
        .await
        .expect("list")
        .into_inner()
        .tokens;
    let names: Vec<&str> = listed.iter().map(|token| token.name.as_str()).collect();
    assert_eq!(names, ["admin", "brief", "reader"]);
    assert_eq!(listed[2].created_by, "admin");
    assert!(listed[2].last_use_time.is_some(), "its use is recorded");
    server.process.stop().await;
    let catalog = std::fs::read(&server.catalog).expect("read catalog");
    let log = std::fs::read_to_string(root.path().join("server.log")).expect("read log");
    for secret in [&admin_secret, &reader_secret, &operator_secret, &brief] {
        // `coffer_<32 hex digits of the id>_<random, base64url>`: the random part may itself
        // hold a `_`, so it is cut by position, not at the last `_`.
        let random = secret
            .strip_prefix("coffer_")
            .and_then(|rest| rest.get(33..))
            .expect("random part");
        assert!(random.len() >= 40, "{random}");
        assert!(
            !catalog
                .windows(random.len())
                .any(|window| window == random.as_bytes()),
            "a secret is in the catalog"
        );
        assert!(!log.contains(random), "a secret reached the log");
    }
    assert!(
        log.contains("call refused"),
        "refusals are logged, without secrets"
    );
}

#[tokio::test]
async fn cofferctl_presents_its_token_and_exits_by_what_the_server_says() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(root.path()).await;
    let run = |command: &mut tokio::process::Command| {
        let output = command.output();
        async move {
            let output = output.await.expect("run cofferctl");
            (
                output.status.code().expect("exit code"),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
    };
    let (code, secret, stderr) = run(server.cofferctl().args([
        "token",
        "create",
        "viewer",
        "--scope",
        "read",
        "--expires-in",
        "30d",
    ]))
    .await;
    assert_eq!(code, 0, "{stderr}");
    let secret = secret.trim().to_string();
    assert!(secret.starts_with("coffer_"), "{secret}");
    assert!(stderr.contains("only this once"), "{stderr}");

    let token_file = root.path().join("viewer.token");
    std::fs::write(&token_file, format!("{secret}\n")).expect("token file");
    let (code, whoami, stderr) = run(server
        .cofferctl()
        .env_remove("COFFER_TOKEN")
        .env("COFFER_TOKEN_FILE", &token_file)
        .args(["token", "whoami"]))
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        whoami.contains("viewer") && whoami.contains("read"),
        "{whoami}"
    );

    let (code, _, stderr) = run(server.cofferctl().env("COFFER_TOKEN", &secret).args([
        "location",
        "create",
        "vault",
        "--fs",
        "/var/tmp/coffer-vault",
    ]))
    .await;
    assert_eq!(code, 13, "PERMISSION_DENIED: {stderr}");
    let (code, _, stderr) = run(server
        .cofferctl()
        .current_dir(root.path())
        .env_remove("COFFER_TOKEN")
        .args(["cluster", "list"]))
    .await;
    assert_eq!(code, 12, "UNAUTHENTICATED: {stderr}");
    let (code, _, stderr) = run(server
        .cofferctl()
        .env_remove("COFFER_TOKEN")
        .env("COFFER_TOKEN_FILE", root.path().join("missing.token"))
        .args(["cluster", "list"]))
    .await;
    assert_eq!(
        code, 2,
        "an unreadable token file is a usage error: {stderr}"
    );

    let (code, listed, stderr) = run(server.cofferctl().args(["token", "list"])).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        listed.contains("viewer") && listed.contains("admin"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "no secret is listed");
    let (code, _, stderr) = run(server.cofferctl().args(["token", "revoke", "viewer"])).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, _, _) = run(server
        .cofferctl()
        .env("COFFER_TOKEN", &secret)
        .args(["cluster", "list"]))
    .await;
    assert_eq!(code, 12, "revoked");
}

#[tokio::test]
async fn a_server_told_to_run_without_authentication_lets_anyone_in() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    write(&agent.data.join("f"), b"x\n");
    let server = TestServer::start_with(root.path(), &["--auth", "none"]).await;
    assert!(server.admin_token.is_none());
    assert!(
        !root.path().join("admin.token").exists(),
        "no token is made when none is asked for"
    );
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register without a token");
    create_fs_location(&client, "vault", &root.path().join("vault")).await;
    let run = coffer_tests::run_backup(&client, "prod", "vault", proto::BackupKind::Full).await;
    assert_eq!(run.state(), proto::RunState::Succeeded);
    assert_eq!(run.started_by, "anonymous");
    let me = client
        .tokens()
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner();
    assert!(me.token.is_none());
    let log = std::fs::read_to_string(root.path().join("server.log")).expect("log");
    assert!(log.contains("authentication is off"), "said loudly");
}
