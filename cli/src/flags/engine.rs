//! Engine limits and threads, shared by `serve` and `convert`.

use std::num::NonZeroUsize;

use clap::Args;
use pixelfeed_engine::EngineConfig;

use super::values::aspect_ratio;

#[derive(Debug, Args)]
pub(crate) struct EngineArgs {
    /// Largest accepted image area (width × height, read from the header
    /// before decoding); larger images become error rows.
    #[arg(long, default_value_t = EngineConfig::default().max_pixels)]
    pub(crate) max_pixels: u64,

    /// Largest accepted ratio of an image's longer side to its shorter side;
    /// more elongated images become error rows.
    #[arg(long, default_value_t = EngineConfig::default().max_aspect_ratio, value_parser = aspect_ratio)]
    pub(crate) max_aspect_ratio: f64,

    /// Largest accepted encoded size of one image, in bytes; larger images
    /// become error rows.
    #[arg(long, default_value_t = EngineConfig::default().max_encoded_bytes)]
    pub(crate) max_image_bytes: usize,

    /// Largest EXIF or XMP block read to find an image's orientation, in
    /// bytes (compressed PNG text counts inflated); images whose needed
    /// metadata is larger become error rows.
    #[arg(long, default_value_t = EngineConfig::default().max_metadata_bytes)]
    pub(crate) max_metadata_bytes: usize,

    /// Worker threads for image processing (the rayon global pool).
    /// Default: one per CPU core.
    #[arg(long)]
    pub(crate) threads: Option<NonZeroUsize>,
}
