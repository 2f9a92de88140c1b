//! Compiles every `.proto` file under `proto/coffer` once with protox (no system protoc) and feeds
//! that one descriptor set both to tonic-prost-build for the Rust code and to OUT_DIR for server
//! reflection, so the code and what reflection serves can never disagree.

use std::path::{Path, PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("coffer");
    // Cargo does not watch the proto folder on its own: a changed .proto must rebuild the crate.
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut files = Vec::new();
    collect_protos(&proto_root, &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let relative: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(&manifest_dir).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?;

    let descriptor_set = protox::compile(&relative, [&manifest_dir])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection on each process lists exactly the services it serves: the server the public
    // API, the agent its own. Both sets keep the well-known types their files import.
    std::fs::write(
        out_dir.join("coffer_v1_descriptor.bin"),
        descriptor_subset(&descriptor_set, "coffer.agent.").encode_to_vec(),
    )?;
    std::fs::write(
        out_dir.join("coffer_agent_v1_descriptor.bin"),
        descriptor_subset(&descriptor_set, "coffer.v1").encode_to_vec(),
    )?;

    // Type names (`prost::Name`) let clients find a message's descriptor by its full name, for
    // example to render it as proto3 JSON through prost-reflect.
    let mut prost_config = tonic_prost_build::Config::new();
    prost_config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(descriptor_set, prost_config)?;
    Ok(())
}

/// The descriptor set without the files whose package starts with `excluded_package`.
fn descriptor_subset(
    set: &prost_types::FileDescriptorSet,
    excluded_package: &str,
) -> prost_types::FileDescriptorSet {
    prost_types::FileDescriptorSet {
        file: set
            .file
            .iter()
            .filter(|file| !file.package().starts_with(excluded_package))
            .cloned()
            .collect(),
    }
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
