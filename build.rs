//! Compiles `proto/` into `OUT_DIR`: the Rust types and tonic stubs, and the
//! descriptor set that gRPC reflection serves. protox parses the protos in
//! pure Rust, so no system `protoc` is needed.

use std::path::PathBuf;

use protox::prost::Message;

const PROTOS: &[&str] = &["proto/tokengate/v1/tokengate.proto"];
/// Envoy's ext_authz API: only its descriptor set is built here, for
/// reflection; the types come from the envoy-types crate (same sources).
const ENVOY_PROTOS: &[&str] = &["envoy/service/auth/v3/external_auth.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // Cargo hands a build script its output folder only through the environment.
    #[allow(clippy::disallowed_methods)]
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(
        out_dir.join("tokengate_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    let envoy = protox::compile(ENVOY_PROTOS, ["proto/third_party"])?;
    std::fs::write(out_dir.join("envoy_descriptor.bin"), envoy.encode_to_vec())?;
    build_info();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

/// The git commit and the compiler, for `tokengate_build_info`. A build
/// outside a git checkout (a source tarball) says `unknown`.
fn build_info() {
    let output = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    // Rerun when the commit moves: HEAD, the branch it names, and the packed
    // refs. The paths come from git itself: in a worktree `.git` is a file,
    // HEAD lives under the worktree's git dir and the branches under the
    // common one. A path that does not exist would make Cargo rerun this
    // script, and rebuild the crate, on every build; the whole refs/heads
    // folder would do the same whenever any other branch moved.
    let git_dir = output("git", &["rev-parse", "--absolute-git-dir"]);
    let common_dir = output(
        "git",
        &["rev-parse", "--path-format=absolute", "--git-common-dir"],
    );
    let branch = output("git", &["symbolic-ref", "-q", "HEAD"]);
    let watched = [
        git_dir.as_ref().map(|d| format!("{d}/HEAD")),
        common_dir
            .as_ref()
            .zip(branch.as_ref())
            .map(|(d, b)| format!("{d}/{b}")),
        common_dir.as_ref().map(|d| format!("{d}/packed-refs")),
    ];
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    let sha =
        output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Cargo names the compiler it builds with only through the environment.
    #[allow(clippy::disallowed_methods)]
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TOKENGATE_GIT_SHA={sha}");
    println!("cargo:rustc-env=TOKENGATE_RUSTC={version}");
}
