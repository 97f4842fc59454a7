//! Enforces the import rules of ARCHITECTURE.md: the pure core stays pure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The source of `module` with its `#[cfg(test)]` tails removed, per file.
fn sources(module: &str) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let dir = root.join(module);
    let files = if dir.is_dir() {
        rust_files(&dir)
    } else {
        vec![root.join(format!("{module}.rs"))]
    };
    files
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            let code = match text.find("#[cfg(test)]") {
                Some(i) => &text[..i],
                None => &text[..],
            };
            // Comments may name what the code must not use; only code counts.
            let code = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            (p, code)
        })
        .collect()
}

fn assert_never_mentions(module: &str, forbidden: &[&str]) {
    for (path, code) in sources(module) {
        for word in forbidden {
            assert!(
                !code.contains(word),
                "{} mentions `{word}`, which ARCHITECTURE.md forbids in `{module}`",
                path.display()
            );
        }
    }
}

#[test]
fn domain_is_plain_data() {
    assert_never_mentions(
        "domain",
        &[
            "tokio",
            "tonic",
            "serde",
            "SystemTime",
            "Instant",
            "crate::",
        ],
    );
}

#[test]
fn token_is_pure() {
    assert_never_mentions(
        "token",
        &[
            "tokio",
            "tonic",
            "SystemTime",
            "Instant::now",
            "getrandom",
            "rand::",
            "std::fs",
            "std::net",
            "std::env",
            "crate::identity",
            "crate::policy",
            "crate::grpc",
            "crate::cli",
        ],
    );
}

#[test]
fn policy_is_pure() {
    assert_never_mentions(
        "policy",
        &[
            "tokio",
            "tonic",
            "SystemTime",
            "Instant::now",
            "getrandom",
            "std::fs",
            "std::net",
            "std::env",
            "crate::identity",
            "crate::token",
            "crate::grpc",
            "crate::cli",
        ],
    );
}

#[test]
fn identity_stays_out_of_the_other_layers() {
    assert_never_mentions(
        "identity",
        &[
            "tonic",
            "crate::grpc",
            "crate::policy",
            "crate::token",
            "crate::cli",
        ],
    );
}

#[test]
fn the_gate_takes_time_and_randomness_as_arguments() {
    assert_never_mentions(
        "gate",
        &[
            "tokio",
            "tonic",
            "SystemTime",
            "Instant::now",
            "getrandom",
            "entropy",
            "crate::identity",
            "crate::grpc",
            "crate::cli",
        ],
    );
}

#[test]
fn protobuf_stays_in_grpc() {
    for module in [
        "domain", "token", "policy", "identity", "gate", "config", "mesh",
    ] {
        assert_never_mentions(module, &["grpc::pb", "prost", "tonic::Status"]);
    }
}

#[test]
fn the_mesh_mapping_knows_no_protobuf() {
    assert_never_mentions(
        "mesh",
        &[
            "tonic",
            "prost",
            "envoy_types",
            "tokio",
            "SystemTime",
            "crate::grpc",
            "crate::identity",
        ],
    );
}
