//! The stable kinds of per-row errors: what a row's `error` text is about,
//! as a short label for metrics and for clients that branch on it. The
//! texts themselves are for people and may be reworded; the kinds are part
//! of the contract.

/// Why a row has no tensor, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowErrorKind {
    /// The `image` cell is null.
    Null,
    /// The `image` cell holds zero bytes.
    Empty,
    /// Over the encoded-size limit.
    TooManyBytes,
    /// Over the pixel limit (from the header, before decoding).
    TooManyPixels,
    /// Over the aspect-ratio limit.
    AspectRatio,
    /// A format recognised by its magic bytes that this server does not decode.
    UnsupportedFormat,
    /// Magic bytes of no known image format.
    UnknownFormat,
    /// Structurally broken data.
    Corrupt,
    /// Data that ends too early.
    Truncated,
    /// A valid variant of a supported format that the decoder does not implement.
    UnsupportedVariant,
    /// Any other decoder failure.
    DecodeFailed,
    /// The resize step would need an intermediate image beyond the limits.
    ResizedTooLarge,
    /// EXIF/XMP metadata over the metadata limit.
    MetadataTooLarge,
    /// A bug or a contained panic.
    Internal,
}

impl RowErrorKind {
    /// Every kind, in a fixed order.
    pub const ALL: [RowErrorKind; 14] = [
        Self::Null,
        Self::Empty,
        Self::TooManyBytes,
        Self::TooManyPixels,
        Self::AspectRatio,
        Self::UnsupportedFormat,
        Self::UnknownFormat,
        Self::Corrupt,
        Self::Truncated,
        Self::UnsupportedVariant,
        Self::DecodeFailed,
        Self::ResizedTooLarge,
        Self::MetadataTooLarge,
        Self::Internal,
    ];

    /// The label (`snake_case`), e.g. `too_many_pixels`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Empty => "empty",
            Self::TooManyBytes => "too_many_bytes",
            Self::TooManyPixels => "too_many_pixels",
            Self::AspectRatio => "aspect_ratio",
            Self::UnsupportedFormat => "unsupported_format",
            Self::UnknownFormat => "unknown_format",
            Self::Corrupt => "corrupt",
            Self::Truncated => "truncated",
            Self::UnsupportedVariant => "unsupported_variant",
            Self::DecodeFailed => "decode_failed",
            Self::ResizedTooLarge => "resized_too_large",
            Self::MetadataTooLarge => "metadata_too_large",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for RowErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
