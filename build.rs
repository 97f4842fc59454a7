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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
