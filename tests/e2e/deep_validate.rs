//! Deep validation: agents download objects and verify their BLAKE3. Rot that keeps an object's
//! size is found only by a deep validation, which names the files it breaks; a truncated object
//! is found by a quick one already (its stored size is impossible); sampled validations verify
//! the objects verified longest ago first, so repeated ones cover every object.

use coffer_client::{CofferClient, proto};
use coffer_tests::{
    TestAgent, TestServer, create_fs_location, noise, run_backup, watch_to_end, write,
};
use tonic::Code;

use crate::{node, register};

async fn validate(client: &CofferClient, depth: proto::ValidationDepth, sample: u32) -> proto::Run {
    let run_id = client
        .locations()
        .validate_location(proto::ValidateLocationRequest {
            location: "vault".into(),
            cluster: "prod".into(),
            depth: depth.into(),
            sample_percent: sample,
        })
        .await
        .expect("validate")
        .into_inner()
        .run_id;
    let run = watch_to_end(client, &run_id).await.pop().expect("final");
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    run
}

#[tokio::test]
async fn deep_validation_finds_rot_samples_cover_every_object_and_quick_finds_truncation() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    // Twelve files of distinct content: twelve objects.
    for index in 0..11u64 {
        write(
            &agent.data.join(format!("ks/t1/part-{index}.db")),
            &noise(2048 + index as usize * 100, index + 1),
        );
    }
    let big = noise(3 << 20, 99);
    write(&agent.data.join("ks/t1/big.db"), &big);
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    let cluster = client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register")
        .into_inner()
        .cluster
        .expect("cluster");
    let vault = root.path().join("vault");
    create_fs_location(&client, "vault", &vault).await;
    let backup = run_backup(&client, "prod", "vault", proto::BackupKind::Full).await;
    assert_eq!(backup.state(), proto::RunState::Succeeded);

    // Sampled: 25% of 12 objects is 3 a run; each run verifies 3 not verified before, until
    // every object was verified; none is damaged.
    let mut never_verified = Vec::new();
    for _ in 0..4 {
        let run = validate(&client, proto::ValidationDepth::Deep, 25).await;
        let result = run.validation.expect("a result");
        assert_eq!(result.objects_referenced, 12, "{result:?}");
        assert_eq!(result.objects_to_verify, 3, "{result:?}");
        assert_eq!(result.objects_verified, 3, "{result:?}");
        assert_eq!(result.objects_damaged, 0, "{result:?}");
        assert!(result.backups[0].restorable);
        never_verified.push(result.objects_never_verified);
    }
    assert_eq!(
        never_verified,
        [9, 6, 3, 0],
        "the least recently verified first"
    );

    // Rot inside the big object, its size unchanged: quick sees nothing, deep finds it and
    // names the file.
    let object_of = |content: &[u8]| {
        let hash = blake3::hash(content).to_hex().to_string();
        let path = vault
            .join("clusters")
            .join(&cluster.id)
            .join("objects")
            .join(&hash[..2])
            .join(&hash);
        (hash, path)
    };
    let (big_hash, big_object) = object_of(&big);
    let mut stored = std::fs::read(&big_object).expect("read object");
    let middle = stored.len() / 2;
    stored[middle] ^= 0x40;
    std::fs::write(&big_object, &stored).expect("rot");
    let quick = validate(&client, proto::ValidationDepth::Quick, 0).await;
    let result = quick.validation.expect("a result");
    assert!(result.backups[0].restorable, "same size: {result:?}");
    assert_eq!(result.objects_damaged, 0);
    assert_eq!(result.objects_verified, 0, "quick downloads nothing");

    let deep = validate(&client, proto::ValidationDepth::Deep, 0).await;
    let result = deep.validation.expect("a result");
    assert_eq!(result.objects_to_verify, 12, "{result:?}");
    assert_eq!(result.objects_verified, 12, "{result:?}");
    assert!(result.bytes_verified >= big.len() as u64, "{result:?}");
    assert_eq!(result.objects_damaged, 1, "{result:?}");
    let checked = &result.backups[0];
    assert!(!checked.restorable);
    assert_eq!(checked.damaged_objects, 1);
    assert!(
        checked
            .affected_files
            .iter()
            .any(|file| file.contains("ks/t1/big.db")
                && file.contains(&big_hash)
                && file.contains("damaged")),
        "{:?}",
        checked.affected_files
    );

    // cofferctl: a deep validation that finds a backup unrestorable exits 8 and says why.
    let output = server
        .cofferctl()
        .args([
            "location",
            "validate",
            "vault",
            "--cluster",
            "prod",
            "--deep",
            "--sample",
            "50",
            "--watch",
        ])
        .output()
        .await
        .expect("run cofferctl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(8),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 damaged") && stdout.contains("Verified: 6 of 6"),
        "half the objects, the damaged one (no longer counted verified) first: {stdout}"
    );

    // A truncated object: its stored size is impossible for its file, and a quick validation
    // says so.
    let small = noise(2048, 1);
    let (small_hash, small_object) = object_of(&small);
    std::fs::write(&small_object, b"COFFER\x01\x00").expect("truncate");
    let quick = validate(&client, proto::ValidationDepth::Quick, 0).await;
    let result = quick.validation.expect("a result");
    assert_eq!(result.objects_damaged, 1, "{result:?}");
    assert!(
        result.backups[0]
            .affected_files
            .iter()
            .any(|file| file.contains("part-0.db")
                && file.contains(&small_hash)
                && file.contains("stored as 8 bytes")),
        "{:?}",
        result.backups[0].affected_files
    );

    for (depth, sample, code) in [
        (
            proto::ValidationDepth::Deep as i32,
            101,
            Code::InvalidArgument,
        ),
        (7, 0, Code::InvalidArgument),
    ] {
        let status = client
            .locations()
            .validate_location(proto::ValidateLocationRequest {
                location: "vault".into(),
                cluster: "prod".into(),
                depth,
                sample_percent: sample,
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
    }
}
