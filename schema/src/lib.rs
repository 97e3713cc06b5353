//! The pixelfeed wire contract (v1): the one thing the server and every
//! client share.
//!
//! - [`TransformSpec`] — the validated JSON transform spec a client sends as
//!   the `DoExchange` descriptor command ([`spec`]).
//! - [`columns`] and the metadata keys — names on the wire.
//! - [`FixedShapeTensorMetadata`] and [`tensor_field`] — the
//!   `arrow.fixed_shape_tensor` extension type of the `tensor` column
//!   ([`extension`]), written by hand because arrow-rs's own serialiser
//!   emits JSON pyarrow rejects.
//! - [`output_schema`] — the schema of every output batch for a given input
//!   schema and spec ([`output`]).
//! - [`ShardTicket`] and [`InfoRequest`] — dataset reads: the
//!   `GetFlightInfo` command and the `DoGet` ticket ([`ticket`]).
//! - [`RowErrorKind`] — the stable kinds behind the `error` column.
//!
//! API boundary: this crate knows nothing of pixels or of Flight transport
//! (its dependencies are arrow-schema and serde); it only says what goes
//! over the wire. `fixtures/contract.json` is the same contract as data,
//! checked against these constants by `tests/contract.rs` and against the
//! Python client's copy by `tests/python/test_contract.py`.

pub mod excerpt;
pub mod extension;
pub mod output;
pub mod row_error;
pub mod spec;
pub mod ticket;

pub use excerpt::excerpt;
pub use extension::{
    tensor_field, value_type, FixedShapeTensorMetadata, EXTENSION_METADATA_KEY, EXTENSION_NAME_KEY,
    FIXED_SHAPE_TENSOR,
};
pub use output::{geometry_fields, image_column_index, output_schema, ContractError};
pub use row_error::RowErrorKind;
pub use spec::{
    Color, Crop, DType, Filter, Flip, JpegDecoder, Layout, Normalize, Resize, SpecError,
    TransformSpec,
};
pub use ticket::{InfoRequest, ShardTicket, TicketError, MAX_SHARDS, TICKET_VERSION};

/// Schema metadata key holding the resolved spec JSON that produced a batch.
pub const SPEC_METADATA_KEY: &str = "pixelfeed.spec";
/// Tensor field metadata key naming the element type as the spec does
/// (`float32`, `float16`, `bfloat16`, `uint8`). Needed for `bfloat16`, whose
/// values are carried as `uint16` because Arrow has no bfloat16 type.
pub const DTYPE_METADATA_KEY: &str = "pixelfeed.dtype";
/// Schema metadata key holding the wire contract version.
pub const VERSION_METADATA_KEY: &str = "pixelfeed.version";
/// The wire contract version this crate describes.
pub const WIRE_VERSION: &str = "1";
/// The preset a request that names no spec gets (dataset reads, clients'
/// defaults).
pub const DEFAULT_PRESET: &str = "imagenet";

/// Column names of the wire contract.
pub mod columns {
    /// Input: the encoded image bytes (`binary`, `large_binary` or `binary_view`).
    pub const IMAGE: &str = "image";
    /// Output: the decoded tensor, `FixedSizeList<T, N>` with the
    /// `arrow.fixed_shape_tensor` extension type; null for failed rows.
    pub const TENSOR: &str = "tensor";
    /// Output: utf8, null for good rows, a human-readable reason for bad ones.
    pub const ERROR: &str = "error";
    /// Output: uint32 source height after EXIF orientation (null when unknown).
    pub const HEIGHT: &str = "height";
    /// Output: uint32 source width after EXIF orientation (null when unknown).
    pub const WIDTH: &str = "width";
    /// Output: utf8, null unless the row decoded only with recovery (a
    /// truncated or corrupt JPEG with `strict: false`); says what was wrong.
    pub const WARNING: &str = "warning";
    /// Output: struct of per-row geometry (see [`crate::geometry_fields`]);
    /// null for failed rows.
    pub const GEOMETRY: &str = "geometry";
    /// Input (optional): an integer column whose value, instead of the row's
    /// position, keys the row's random draws.
    pub const SEED: &str = "seed";
    /// Every column name the server appends to the passthrough columns, in order.
    pub const OUTPUT: [&str; 6] = [TENSOR, ERROR, HEIGHT, WIDTH, WARNING, GEOMETRY];
}
