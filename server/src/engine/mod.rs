//! The image engine: a record batch of encoded images plus a
//! [`TransformSpec`] in, a record batch of tensors out.
//!
//! Key types: [`EngineConfig`] (limits), [`BlockAllocator`] (where output
//! tensor bytes live), [`process_batch`] (the whole pipeline for one batch).
//!
//! Invariants:
//! - one output row per input row, in order; a bad image is a row with a null
//!   tensor and a non-empty `error`, never an `Err` for the batch;
//! - dimensions are checked against [`EngineConfig`] limits from the header,
//!   before any pixel buffer is allocated;
//! - a panic inside a decoder is caught and becomes that row's error.

mod output;

pub use output::{BlockAllocator, HeapAllocator, TensorBlock};

use arrow_array::RecordBatch;
use pixelfeed_schema::{ContractError, TransformSpec};

/// Limits applied to every image before it is decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Largest accepted width × height (after the header is read, before decode).
    pub max_pixels: u64,
    /// Largest accepted ratio of the longer to the shorter side.
    pub max_aspect_ratio: f64,
    /// Largest accepted encoded size of one image in bytes.
    pub max_encoded_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_pixels: 100_000_000,
            max_aspect_ratio: 100.0,
            max_encoded_bytes: 64 << 20,
        }
    }
}

/// A failure of the whole batch (as opposed to one row): the input breaks
/// the wire contract, or the output buffer could not be had.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The input batch does not follow the wire contract.
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// The allocator could not provide an output block.
    #[error("could not allocate the output tensor buffer: {0}")]
    Allocation(String),
    /// Assembling the Arrow output failed (a bug, reported rather than panicking).
    #[error("building the output batch failed: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// Runs the whole pipeline over one input batch.
///
/// The output has the schema `pixelfeed_schema::output_schema(batch.schema(), spec)`
/// and exactly `batch.num_rows()` rows in input order. Tensor bytes for the
/// whole batch are written into one block from `alloc`.
pub fn process_batch(
    batch: &RecordBatch,
    spec: &TransformSpec,
    config: &EngineConfig,
    alloc: &dyn BlockAllocator,
) -> Result<RecordBatch, EngineError> {
    let _ = (batch, spec, config, alloc);
    Err(EngineError::Allocation("engine under construction".into()))
}
