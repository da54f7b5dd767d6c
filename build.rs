//! Generates the protobuf messages and the grpcio service code from `proto/gossip.proto`.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate (no system protoc needed). It writes a
//! descriptor set, from which `protobuf-codegen` 2.x writes the messages and `grpcio-compiler`
//! the service. The generated files are included by `src/proto.rs`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use protobuf::Message;

const PROTO: &str = "proto/gossip.proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    describe_build();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    let descriptor_path = out_dir.join("gossip.desc");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this platform");
    let status = Command::new(&protoc)
        .arg("--proto_path=proto")
        .arg(format!(
            "--descriptor_set_out={}",
            descriptor_path.display()
        ))
        .arg("--include_imports")
        .arg(PROTO)
        .status()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", protoc.display()));
    assert!(status.success(), "protoc failed on {PROTO}");

    let bytes = fs::read(&descriptor_path).expect("read descriptor set");
    let set = protobuf::descriptor::FileDescriptorSet::parse_from_bytes(&bytes)
        .expect("parse descriptor set");
    let files = set.get_file();
    let to_generate = vec!["gossip.proto".to_string()];

    let customize = protobuf_codegen::Customize {
        // Payloads are `bytes::Bytes`: cheap to share between retries and neighbours.
        carllerche_bytes_for_bytes: Some(true),
        ..Default::default()
    };
    for result in protobuf_codegen::gen(files, &to_generate, &customize) {
        write_includable(&out_dir, &result.name, &result.content);
    }
    for result in grpcio_compiler::codegen::gen(files, &to_generate) {
        write_includable(&out_dir, &result.name, &result.content);
    }
}

/// Tells `gossip --version` which commit and cargo features it was built from
/// (`GOSSIP_GIT_COMMIT`, `GOSSIP_FEATURES`).
fn describe_build() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let commit = if dirty {
        format!("{commit}+changes")
    } else {
        commit
    };
    println!("cargo:rustc-env=GOSSIP_GIT_COMMIT={commit}");
    // A new commit moves HEAD or the branch it names.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
    }
    let mut features: Vec<String> = env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase()))
        // `default` names no feature of its own; cargo spells `-` as `_` here.
        .filter(|f| f != "default")
        .map(|f| f.replace('_', "-"))
        .collect();
    features.sort();
    let features = if features.is_empty() {
        "none".to_owned()
    } else {
        features.join(",")
    };
    println!("cargo:rustc-env=GOSSIP_FEATURES={features}");
}

/// Writes generated code so that `include!` accepts it: inner attributes and inner doc comments
/// are only allowed at the top of a real module file, so they are dropped (`src/proto.rs` puts
/// the needed `allow`s on the enclosing module).
fn write_includable(out_dir: &Path, name: &str, content: &[u8]) {
    let text = String::from_utf8(content.to_vec()).expect("generated code is UTF-8");
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let l = line.trim_start();
            !(l.starts_with("#![") || l.starts_with("//!"))
        })
        .collect();
    fs::write(out_dir.join(name), kept.join("\n")).expect("write generated code");
}
