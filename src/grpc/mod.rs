//! The tonic adapters, which convert the wire in and render the pipeline's
//! outcome out: with `server`, the only modules that know protobuf (statuses
//! are built by `render`).

pub mod convert;
pub mod envoy_check;
pub mod health;
pub mod service;

/// The generated protobuf types and tonic stubs of `proto/tokengate/v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("tokengate.v1");

    /// The encoded descriptor set of the tokengate protos, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/tokengate_descriptor.bin"));

    /// The encoded descriptor set of Envoy's ext_authz API (`proto/third_party`), for reflection.
    pub const ENVOY_FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));
}
