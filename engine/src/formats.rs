//! The formats decoded whole, at full size, with no region or draft: WebP,
//! GIF, BMP and TIFF. One face for the row pipeline: open (header only,
//! no pixel memory), size and orientation for the limits and the plan,
//! then decode to 8-bit gray or RGB.

use crate::error::RowError;
use crate::sniff::Sniffed;
use crate::{bmp, gif, tiff, webp};

/// An image whose header was read; its pixels are not decoded yet.
pub(crate) enum Opened<'a> {
    WebP(webp::WebpHeader<'a>),
    Gif(gif::GifHeader),
    Bmp(bmp::BmpHeader),
    // Boxed: the TIFF decoder state is large; one per row, next to a decode.
    Tiff(Box<tiff::TiffPage<'a>>),
}

impl<'a> Opened<'a> {
    /// Reads the header of `data`, sniffed as `format`; `None` when the
    /// format is not one of these.
    pub(crate) fn open(format: Sniffed, data: &'a [u8]) -> Option<Result<Self, RowError>> {
        Some(match format {
            Sniffed::WebP => webp::parse_header(data).map(Self::WebP),
            Sniffed::Gif => gif::parse_header(data).map(Self::Gif),
            Sniffed::Bmp => bmp::parse_header(data).map(Self::Bmp),
            Sniffed::Tiff => tiff::open(data).map(|p| Self::Tiff(Box::new(p))),
            Sniffed::Jpeg | Sniffed::Png | Sniffed::Unsupported(_) | Sniffed::Unknown => {
                return None
            }
        })
    }

    /// `(width, height)` in stored orientation: what the limits check.
    pub(crate) fn size(&self) -> (u32, u32) {
        match self {
            Self::WebP(h) => (h.width, h.height),
            Self::Gif(h) => (h.width, h.height),
            Self::Bmp(h) => (h.width, h.height),
            Self::Tiff(p) => (p.width, p.height),
        }
    }

    /// Whether the orientation is part of the stored layout, applied even
    /// when the spec turns EXIF orientation off: TIFF's Orientation tag,
    /// which Pillow's TIFF loader applies on load (`TiffImageFile.load_end`
    /// calls `exif_transpose`).
    pub(crate) fn orientation_is_layout(&self) -> bool {
        matches!(self, Self::Tiff(_))
    }

    /// The raw EXIF orientation value, reading no metadata blob over
    /// `limit` bytes. GIF and BMP carry none.
    pub(crate) fn orientation(&self, limit: usize) -> Result<Option<u16>, RowError> {
        match self {
            Self::WebP(h) => h.orientation(limit),
            // The tag sits in the IFD the decoder already read (its tag
            // values are capped); the file itself is the "EXIF".
            Self::Tiff(p) => Ok(p.orientation()),
            Self::Gif(_) | Self::Bmp(_) => Ok(None),
        }
    }

    /// Decodes into `dst` as 8-bit gray (1 channel) or RGB (3), alpha
    /// dropped; returns the channel count. None of these decoders recovers
    /// from damage, so strict and lenient specs get the same error.
    pub(crate) fn decode(self, data: &[u8], dst: &mut Vec<u8>) -> Result<usize, RowError> {
        match self {
            Self::WebP(h) => webp::decode(data, &h, dst),
            Self::Gif(h) => gif::decode(data, &h, dst),
            Self::Bmp(h) => bmp::decode(data, &h, dst),
            Self::Tiff(p) => tiff::decode(*p, dst),
        }
    }
}
