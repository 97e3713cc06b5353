//! The pixelfeed wire contract (v1): the one thing the server and every
//! client share.
//!
//! - [`TransformSpec`] — the validated JSON transform spec a client sends as
//!   the `DoExchange` descriptor command ([`spec`]).
//! - [`columns`] — names of the input and output columns.
//! - [`FixedShapeTensorMetadata`] and [`tensor_field`] — the
//!   `arrow.fixed_shape_tensor` extension type of the `tensor` column, written
//!   by hand because arrow-rs's own serialiser emits JSON pyarrow rejects.
//! - [`output_schema`] — the schema of every output batch for a given input
//!   schema and spec.
//!
//! This crate knows nothing of pixels or of Flight transport; it only says
//! what goes over the wire.

pub mod spec;
mod tensor;

pub use spec::{
    Color, Crop, DType, Filter, Flip, Layout, Normalize, Resize, SpecError, TransformSpec,
};
pub use tensor::{
    geometry_fields, image_column_index, output_schema, tensor_field, value_type, ContractError,
    FixedShapeTensorMetadata, DTYPE_METADATA_KEY, EXTENSION_METADATA_KEY, EXTENSION_NAME_KEY,
    FIXED_SHAPE_TENSOR, SPEC_METADATA_KEY, VERSION_METADATA_KEY, WIRE_VERSION,
};

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
