//! Coffer's wire contract.
//!
//! This crate alone compiles `proto/`: the public API `coffer.v1` ([`v1`]), the node agent's API
//! `coffer.agent.v1` ([`agent::v1`]), and the encoded descriptor sets that the server and the agent
//! register with gRPC reflection. Everything else depends on it.

/// The public API, package `coffer.v1`.
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::all,
        clippy::pedantic,
        unused_qualifications,
        missing_debug_implementations
    )]
    tonic::include_proto!("coffer.v1");

    /// Encoded `FileDescriptorSet` of the public API and the well-known types it imports, for
    /// the server's reflection service and for rendering messages as JSON.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/coffer_v1_descriptor.bin"));
}

/// The node agent's API.
pub mod agent {
    /// Package `coffer.agent.v1`.
    pub mod v1 {
        #![allow(
            missing_docs,
            clippy::all,
            clippy::pedantic,
            unused_qualifications,
            missing_debug_implementations
        )]
        tonic::include_proto!("coffer.agent.v1");

        /// Encoded `FileDescriptorSet` of the agent API, for the agent's reflection service.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/coffer_agent_v1_descriptor.bin"));
    }
}

pub use prost_types::{Duration, Timestamp};

/// gRPC server reflection for Coffer's processes.
pub mod reflection {
    use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};
    use tonic_reflection::server::v1alpha::{
        ServerReflection as ServerReflectionAlpha,
        ServerReflectionServer as ServerReflectionAlphaServer,
    };
    use tonic_reflection::server::{Builder, Error};

    /// Reflection services for the given encoded descriptor sets, plus gRPC health's: both
    /// `grpc.reflection.v1` and `grpc.reflection.v1alpha`, because widely used tools (grpcurl
    /// 1.8) speak only v1alpha.
    ///
    /// Fails only if a descriptor set compiled into the binary is malformed.
    pub fn services(
        descriptor_sets: &[&'static [u8]],
    ) -> Result<
        (
            ServerReflectionServer<impl ServerReflection>,
            ServerReflectionAlphaServer<impl ServerReflectionAlpha>,
        ),
        Error,
    > {
        let builder = || {
            descriptor_sets.iter().fold(
                Builder::configure()
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, set| builder.register_encoded_file_descriptor_set(set),
            )
        };
        Ok((builder().build_v1()?, builder().build_v1alpha()?))
    }
}
