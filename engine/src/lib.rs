//! The image engine: a record batch of encoded images plus a
//! [`TransformSpec`] in, a record batch of tensors out.
//!
//! Key types: [`EngineConfig`] (limits), [`BlockAllocator`] (where output
//! tensor bytes live), [`process_batch`] (the whole pipeline for one batch).
//!
//! API boundary: the engine knows bytes, pixels and Arrow arrays; it knows
//! nothing of Flight, gRPC, tokio, datasets or CUDA (its `Cargo.toml` lists
//! none of them, and CI checks `cargo tree`), so the server, the offline
//! converter, the fuzz targets and an in-process binding all use the same
//! crate.
//!
//! Architecture invariants:
//! - one output row per input row, in order; a bad image is a row with a null
//!   tensor and a non-empty `error`, never an `Err` for the batch;
//! - dimensions are checked against [`EngineConfig`] limits from the header,
//!   before any pixel buffer is allocated;
//! - a panic inside a decoder is caught and becomes that row's error.
//!
//! Pipeline per row (reference: Pillow 13 + torchvision on PIL images,
//! `Image.open → ImageOps.exif_transpose → convert('RGB'|'L') → resize →
//! center_crop → ToTensor → Normalize`):
//!
//! 1. `sniff`: the format comes from magic bytes only. JPEG, PNG, WebP,
//!    GIF, BMP and TIFF are decoded; JPEG 2000, JPEG XL, AVIF, HEIF, ICO,
//!    PNM and a few more are named in an `unsupported format: ...` error.
//! 2. `jpeg` / `png`: our own bounds-checked header walk finds the size
//!    and orientation metadata, the limits are checked, and a cleaned stream
//!    (pixel-defining segments/chunks only) goes to zune-jpeg / zune-png in
//!    strict mode. See those modules for exactly what is tolerated. With
//!    `spec.draft` a JPEG that the resize shrinks 2× or more goes to
//!    `jpeg_draft` instead: libjpeg-turbo decodes it at 1/2, 1/4 or 1/8
//!    scale (feature `turbojpeg`), and the plan is made again for the
//!    drafted size. WebP, GIF, BMP and TIFF (`formats`: `webp`, `gif`,
//!    `bmp`, `tiff`) get the same order (a header walk of our own or the
//!    crate's IFD read, the limits, then the image-rs decoder) and are
//!    decoded whole at full size.
//! 3. `exif` + `orient`: EXIF Orientation (IFD0 only), else XMP
//!    `tiff:Orientation`, applied as `exif_transpose` does when
//!    `spec.exif_orientation`. `height`/`width` report the oriented size.
//! 4. `color`: RGB to gray with Pillow's `convert('L')` weights, before
//!    resizing; gray sources are broadcast to RGB at the end.
//! 5. `geometry` + `resize`: torchvision's size arithmetic; Pillow's
//!    antialiased filters via fast_image_resize, run horizontal pass first
//!    as Pillow does; nearest neighbour reproduces Pillow's accumulated
//!    sample positions. The crop is fused into the resize: only the part
//!    of the resized image that the output window shows is computed, with
//!    each output pixel's filter weights taken from its place in the full
//!    resize (so the part equals that window of a full resize; unit-tested
//!    in `resize`).
//! 6. `write`: one pass into the row's slot of the batch's single output
//!    block (dtype, normalisation LUT, layout).
//!
//! PNG pixel policy: 16-bit samples keep the high byte, alpha is dropped
//! without compositing (Pillow's `convert('RGB')` does the same), palette
//! images with tRNS become their palette colours.
//!
//! Rows run in parallel on the rayon pool (`batch`); each worker thread
//! keeps its decode/resize buffers and `Resizer` between rows, so steady
//! state allocates nothing per row in the engine itself (zune's decoders
//! keep some internal allocations of their own).

mod alloc;
mod batch;
mod bmp;
mod color;
mod error;
mod exif;
mod formats;
mod geometry;
mod gif;
mod jpeg;
mod orient;
mod png;
mod resize;
mod rng;
mod row;
mod sniff;
mod tiff;
mod webp;
mod write;

pub use alloc::{BlockAllocator, HeapAllocator, TensorBlock};
pub use batch::{decoders_json, jpeg_decoders, process_batch_timed, resolve_spec};
pub use pixelfeed_schema::RowErrorKind;

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
    /// Largest EXIF or XMP blob read for the orientation, in bytes (for
    /// compressed PNG text: after inflating, which stops at this size). A
    /// larger one makes the row an error rather than being silently
    /// ignored, since ignoring it could leave the image unrotated. ICC
    /// profiles and other metadata are skipped unread whatever their size.
    pub max_metadata_bytes: usize,
    /// Whether error messages may quote bytes of the input (the first bytes
    /// of an unknown format, as hex). On for images a client sent, which it
    /// already has; off for files the server reads itself, so an error row
    /// never discloses their content.
    pub quote_input_bytes: bool,
}

impl Default for EngineConfig {
    /// 64 Mpx, aspect ratio 100, 64 MiB encoded, 1 MiB of metadata (Pillow's
    /// `MAX_TEXT_CHUNK`; a JPEG segment holds at most 64 KiB). The pixel limit sits at the
    /// top of the range the hostile corpus asks for (a fully valid
    /// 10000x10000 JPEG must be refused early: decoding it costs ~300 MB and
    /// a second of CPU per row); raise it with `--max-pixels` for large
    /// imagery.
    fn default() -> Self {
        Self {
            max_pixels: 64_000_000,
            max_aspect_ratio: 100.0,
            max_encoded_bytes: 64 << 20,
            max_metadata_bytes: 1 << 20,
            quote_input_bytes: true,
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
    /// The spec asks for something this build cannot do (a draft without
    /// libjpeg-turbo, or a pinned decoder it lacks).
    #[error("{0}")]
    Unsupported(String),
    /// Assembling the Arrow output failed (a bug, reported rather than panicking).
    #[error("building the output batch failed: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// Time one row spent in each stage; `None` for a stage the row did not
/// complete (it failed in it or earlier). Wall-clock time on the worker thread that ran
/// the row, measured with two `Instant` reads per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowStages {
    /// Sniffing, header walk, limit checks and decoding to pixels.
    pub decode: Option<std::time::Duration>,
    /// Gray conversion, orientation, source crop and resize.
    pub resize: Option<std::time::Duration>,
    /// The tensor write: padding, flips, channel order, dtype, normalisation
    /// and layout.
    pub convert: Option<std::time::Duration>,
}

/// What [`process_batch_timed`] learned about each row, in input order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Per-row stage times.
    pub stages: Vec<RowStages>,
    /// Per-row error kind (`None` for a good row): what the row's `error`
    /// text is about, for metrics labels.
    pub errors: Vec<Option<RowErrorKind>>,
}

/// Runs the whole pipeline over one input batch.
///
/// The output has the schema `pixelfeed_schema::output_schema(batch.schema(), spec)`
/// and exactly `batch.num_rows()` rows in input order. Tensor bytes for the
/// whole batch are written into one block from `alloc` (one slot of
/// `spec.row_bytes()` per row, zeroed for failed rows) that becomes the
/// tensor column's values buffer without a copy.
///
/// `first_row` is the position of the batch's first row in its stream
/// (0 for the first batch of a call, the shard's start for a dataset
/// shard): with no `seed` input column, it keys each row's random draws, so
/// the same rows give the same pixels however they are batched.
///
/// Rows are processed in parallel on the global rayon pool, so call this
/// from a blocking thread, not an async task.
///
/// # Errors
/// [`EngineError::Contract`] when the input has no usable `image` column or
/// a passthrough column collides with an output column;
/// [`EngineError::Allocation`] when `alloc` fails. Per-image problems are
/// never errors here: they are reported in the row's `error` column.
pub fn process_batch(
    batch: &RecordBatch,
    spec: &TransformSpec,
    config: &EngineConfig,
    alloc: &dyn BlockAllocator,
    first_row: u64,
) -> Result<RecordBatch, EngineError> {
    process_batch_timed(batch, spec, config, alloc, first_row).map(|(out, _)| out)
}

/// How many worker threads [`process_batch`] spreads rows over: the size
/// of the global rayon pool (set once by its builder, e.g. `--threads`;
/// rayon's default is one per logical CPU).
pub fn worker_threads() -> usize {
    rayon::current_num_threads()
}
