//! Per-row failures. Each becomes the `error` string of its row (the
//! `Display` text), with a null tensor; none of them fails the batch. Each
//! has a stable [`RowErrorKind`] for metrics.

use pixelfeed_schema::RowErrorKind;

/// Why one image produced no tensor. The messages are what a user sees in
/// the `error` column, so they name the problem in plain words and, where a
/// limit is involved, the numbers on both sides of it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum RowError {
    /// The `image` cell is null.
    #[error("image is null")]
    Null,
    /// The `image` cell holds zero bytes.
    #[error("empty image")]
    Empty,
    /// The encoded image is larger than `EngineConfig::max_encoded_bytes`.
    #[error("image is {size} bytes, over the {limit} byte limit")]
    TooManyBytes {
        /// Encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A format recognised from its magic bytes that the engine does not decode.
    #[error("unsupported format: {0}")]
    UnsupportedFormat(&'static str),
    /// Magic bytes of no known image format; with the first bytes as hex
    /// when [`EngineConfig::quote_input_bytes`](crate::EngineConfig) allows.
    #[error(
        "unknown image format{}",
        .0.as_ref().map(|hex| format!(" (first bytes: {hex})")).unwrap_or_default()
    )]
    UnknownFormat(Option<String>),
    /// Width × height from the header exceeds `EngineConfig::max_pixels`.
    #[error("image is {width}x{height} = {mpx} Mpx, over the {limit} Mpx limit")]
    TooManyPixels {
        /// Header width.
        width: u32,
        /// Header height.
        height: u32,
        /// The pixel count in megapixels, formatted.
        mpx: String,
        /// The limit in megapixels, formatted.
        limit: String,
    },
    /// Longer side / shorter side exceeds `EngineConfig::max_aspect_ratio`.
    #[error("image is {width}x{height}, aspect ratio {ratio} over the limit {limit}")]
    AspectRatio {
        /// Header width.
        width: u32,
        /// Header height.
        height: u32,
        /// The ratio, formatted.
        ratio: String,
        /// The limit, formatted.
        limit: String,
    },
    /// The resize step would need an intermediate image beyond the limits.
    #[error("resizing {width}x{height} to {resized_w}x{resized_h} needs more than the {limit} Mpx limit")]
    ResizedTooLarge {
        /// Oriented source width.
        width: u32,
        /// Oriented source height.
        height: u32,
        /// Width after resizing.
        resized_w: u32,
        /// Height after resizing.
        resized_h: u32,
        /// The limit in megapixels, formatted.
        limit: String,
    },
    /// EXIF or XMP metadata needed for the orientation is larger than
    /// `EngineConfig::max_metadata_bytes` (compressed text: inflates past it).
    #[error("{what} is over the {limit} byte metadata limit")]
    MetadataTooLarge {
        /// Which metadata and how big, e.g. `EXIF metadata of 70000 bytes`.
        what: String,
        /// The configured limit.
        limit: usize,
    },
    /// Structurally broken JPEG.
    #[error("corrupt JPEG: {0}")]
    CorruptJpeg(String),
    /// JPEG data that ends too early.
    #[error("truncated JPEG: {0}")]
    TruncatedJpeg(String),
    /// A valid JPEG variant the decoder does not implement.
    #[error("unsupported JPEG: {0}")]
    UnsupportedJpeg(String),
    /// Any other failure reported by zune-jpeg.
    #[error("JPEG decode failed: {0}")]
    JpegDecode(String),
    /// Structurally broken PNG.
    #[error("corrupt PNG: {0}")]
    CorruptPng(String),
    /// PNG data that ends too early.
    #[error("truncated PNG: {0}")]
    TruncatedPng(String),
    /// A valid PNG variant the decoder does not implement.
    #[error("unsupported PNG: {0}")]
    UnsupportedPng(String),
    /// Any other failure reported by zune-png.
    #[error("PNG decode failed: {0}")]
    PngDecode(String),
    /// Structurally broken WebP, GIF, BMP or TIFF data (the format named).
    #[error("corrupt {format}: {detail}")]
    Corrupt {
        /// `WebP`, `GIF`, `BMP` or `TIFF`.
        format: &'static str,
        /// What is broken.
        detail: String,
    },
    /// WebP, GIF, BMP or TIFF data that ends too early.
    #[error("truncated {format}: {detail}")]
    Truncated {
        /// The format.
        format: &'static str,
        /// Where it ends.
        detail: String,
    },
    /// A valid WebP, GIF, BMP or TIFF variant the engine does not decode
    /// (e.g. floating-point TIFF samples), named.
    #[error("unsupported {format}: {detail}")]
    UnsupportedVariant {
        /// The format.
        format: &'static str,
        /// The variant.
        detail: String,
    },
    /// Any other failure of the WebP, GIF, BMP or TIFF decoder.
    #[error("{format} decode failed: {detail}")]
    DecodeFailed {
        /// The format.
        format: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// fast_image_resize refused the job (a bug, reported rather than hidden).
    #[error("resize failed: {0}")]
    Resize(String),
    /// A decoder or the pipeline panicked; the panic was contained.
    #[error("internal decoder error (panic): {0}")]
    Panic(String),
    /// An internal consistency check failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RowError {
    /// [`RowError::Corrupt`] for `format`.
    pub(crate) fn corrupt(format: &'static str, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            format,
            detail: detail.into(),
        }
    }

    /// [`RowError::Truncated`] for `format`.
    pub(crate) fn truncated(format: &'static str, detail: impl Into<String>) -> Self {
        Self::Truncated {
            format,
            detail: detail.into(),
        }
    }

    /// [`RowError::UnsupportedVariant`] for `format`.
    pub(crate) fn unsupported(format: &'static str, detail: impl Into<String>) -> Self {
        Self::UnsupportedVariant {
            format,
            detail: detail.into(),
        }
    }

    /// [`RowError::DecodeFailed`] for `format`.
    pub(crate) fn decode_failed(format: &'static str, detail: impl Into<String>) -> Self {
        Self::DecodeFailed {
            format,
            detail: detail.into(),
        }
    }

    /// The stable kind of this error (the metrics label).
    pub(crate) fn kind(&self) -> RowErrorKind {
        match self {
            Self::Null => RowErrorKind::Null,
            Self::Empty => RowErrorKind::Empty,
            Self::TooManyBytes { .. } => RowErrorKind::TooManyBytes,
            Self::UnsupportedFormat(_) => RowErrorKind::UnsupportedFormat,
            Self::UnknownFormat(_) => RowErrorKind::UnknownFormat,
            Self::TooManyPixels { .. } => RowErrorKind::TooManyPixels,
            Self::AspectRatio { .. } => RowErrorKind::AspectRatio,
            Self::ResizedTooLarge { .. } => RowErrorKind::ResizedTooLarge,
            Self::MetadataTooLarge { .. } => RowErrorKind::MetadataTooLarge,
            Self::CorruptJpeg(_) | Self::CorruptPng(_) | Self::Corrupt { .. } => {
                RowErrorKind::Corrupt
            }
            Self::TruncatedJpeg(_) | Self::TruncatedPng(_) | Self::Truncated { .. } => {
                RowErrorKind::Truncated
            }
            Self::UnsupportedJpeg(_)
            | Self::UnsupportedPng(_)
            | Self::UnsupportedVariant { .. } => RowErrorKind::UnsupportedVariant,
            Self::JpegDecode(_) | Self::PngDecode(_) | Self::DecodeFailed { .. } => {
                RowErrorKind::DecodeFailed
            }
            Self::Resize(_) | Self::Panic(_) | Self::Internal(_) => RowErrorKind::Internal,
        }
    }
}

/// Megapixels for messages: whole numbers from 100 Mpx up, otherwise up to
/// two decimals with trailing zeros trimmed (`4290`, `89.48`, `0.5`).
pub(crate) fn format_mpx(pixels: u64) -> String {
    format_number(pixels as f64 / 1e6)
}

/// A positive number for messages, as [`format_mpx`] formats megapixels.
pub(crate) fn format_number(v: f64) -> String {
    if v >= 100.0 {
        return format!("{}", v.floor());
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_naturally() {
        assert_eq!(format_mpx(4_290_250_000), "4290");
        assert_eq!(format_mpx(100_000_000), "100");
        assert_eq!(format_mpx(89_478_485), "89.48");
        assert_eq!(format_mpx(500_000), "0.5");
        assert_eq!(format_number(65000.0), "65000");
        assert_eq!(format_number(1.5), "1.5");
        assert_eq!(format_number(2.0), "2");
    }

    #[test]
    fn every_error_has_the_kind_its_text_names() {
        let limit = || "1".to_string();
        for (error, kind) in [
            (RowError::Null, "null"),
            (RowError::Empty, "empty"),
            (
                RowError::TooManyBytes {
                    size: 900,
                    limit: 700,
                },
                "too_many_bytes",
            ),
            (
                RowError::TooManyPixels {
                    width: 9,
                    height: 9,
                    mpx: limit(),
                    limit: limit(),
                },
                "too_many_pixels",
            ),
            (
                RowError::AspectRatio {
                    width: 9,
                    height: 1,
                    ratio: limit(),
                    limit: limit(),
                },
                "aspect_ratio",
            ),
            (RowError::UnsupportedFormat("GIF"), "unsupported_format"),
            (
                RowError::UnknownFormat(Some("3c 21".into())),
                "unknown_format",
            ),
            (RowError::TruncatedJpeg("no EOI".into()), "truncated"),
            (RowError::TruncatedPng("x".into()), "truncated"),
            (RowError::CorruptPng("bad CRC".into()), "corrupt"),
            (RowError::CorruptJpeg("x".into()), "corrupt"),
            (
                RowError::UnsupportedJpeg("arithmetic coding".into()),
                "unsupported_variant",
            ),
            (RowError::UnsupportedPng("x".into()), "unsupported_variant"),
            (RowError::JpegDecode("x".into()), "decode_failed"),
            (RowError::PngDecode("x".into()), "decode_failed"),
            (
                RowError::Corrupt {
                    format: "GIF",
                    detail: "x".into(),
                },
                "corrupt",
            ),
            (
                RowError::Truncated {
                    format: "WebP",
                    detail: "x".into(),
                },
                "truncated",
            ),
            (
                RowError::UnsupportedVariant {
                    format: "TIFF",
                    detail: "x".into(),
                },
                "unsupported_variant",
            ),
            (
                RowError::DecodeFailed {
                    format: "BMP",
                    detail: "x".into(),
                },
                "decode_failed",
            ),
            (RowError::Panic("x".into()), "internal"),
            (RowError::Internal("x".into()), "internal"),
            (RowError::Resize("x".into()), "internal"),
            (
                RowError::ResizedTooLarge {
                    width: 1,
                    height: 1,
                    resized_w: 1,
                    resized_h: 1,
                    limit: limit(),
                },
                "resized_too_large",
            ),
            (
                RowError::MetadataTooLarge {
                    what: "EXIF metadata of 70000 bytes".into(),
                    limit: 65536,
                },
                "metadata_too_large",
            ),
        ] {
            assert_eq!(error.kind().as_str(), kind, "{error}");
        }
    }

    #[test]
    fn messages() {
        let e = RowError::TooManyPixels {
            width: 65500,
            height: 65500,
            mpx: format_mpx(65500 * 65500),
            limit: format_mpx(100_000_000),
        };
        assert_eq!(
            e.to_string(),
            "image is 65500x65500 = 4290 Mpx, over the 100 Mpx limit"
        );
        let e = RowError::AspectRatio {
            width: 65000,
            height: 1,
            ratio: format_number(65000.0),
            limit: format_number(100.0),
        };
        assert_eq!(
            e.to_string(),
            "image is 65000x1, aspect ratio 65000 over the limit 100"
        );
        assert_eq!(
            RowError::UnsupportedFormat("GIF").to_string(),
            "unsupported format: GIF"
        );
    }
}
