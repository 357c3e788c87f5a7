//! Wire protocol of flotilla: the worker <-> gateway service (`WorkerGateway`)
//! and the master <-> gateway service (`MasterLink`), package `flotilla.v1`.
//!
//! The `.proto` files under `proto/` are the source of truth; the Rust code is
//! generated at build time by `protox` + `tonic-prost-build`.

#![allow(clippy::large_enum_variant, missing_docs)]

pub mod tls;

pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}

/// Protocol version spoken by this build. Workers send theirs in `Register`;
/// the gateway and masters accept any version from 1 up to this one.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest gRPC message either side accepts (output chunks are far smaller).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
