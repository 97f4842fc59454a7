//! The thin tonic adapter: the only module that knows protobuf and `tonic::Status`.

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
