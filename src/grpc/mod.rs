//! The thin tonic adapter: the only module that knows protobuf and `tonic::Status`.

pub mod convert;
pub mod service;
pub mod status;

/// The generated protobuf types and tonic stubs of `proto/tokengate/v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("tokengate.v1");

    /// The encoded descriptor set of the tokengate protos, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/tokengate_descriptor.bin"));
}
