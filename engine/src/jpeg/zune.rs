//! zune-jpeg: the pure-Rust fallback decoder (builds without a C
//! toolchain, or `"decoder": "zune-jpeg"`).
//!
//! zune-jpeg 0.5 decodes some valid layouts wrongly or refuses them with an
//! opaque error. [`check_layout`] refuses those by name from the header
//! walk's facts before zune sees a byte, so a row is never a silently wrong
//! tensor. The rules were measured on `tests/python/jpeg_matrix.py`'s ~300
//! layouts and on size sweeps: each failing file hits one of them, and no
//! file outside them fails.
//!
//! Strictness: zune-jpeg first runs in strict mode, so a scan that ends
//! early (truncated files) is detected rather than padded silently; with
//! `strict: false` it decodes again in lenient mode and the strict error
//! becomes the row's warning.

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::errors::DecodeErrors;
use zune_jpeg::JpegDecoder;

use super::{truncated, JpegHeader, ScanFacts};
use crate::error::RowError;

/// The decoder and its version, for `stats` and logs.
pub(crate) const NAME: &str = "zune-jpeg 0.5.15";

/// Refuses, by name, what zune-jpeg 0.5 decodes wrongly or cannot decode.
pub(crate) fn check_layout(header: &JpegHeader<'_>, facts: &ScanFacts) -> Result<(), RowError> {
    let refuse = |what: &str| {
        Err(RowError::UnsupportedJpeg(format!(
            "{what} (not decoded by zune-jpeg, this server's pure-Rust decoder; \
             libjpeg-turbo decodes it)"
        )))
    };
    if header.arithmetic {
        return refuse("arithmetic coding");
    }
    // Sequential files whose components come in several scans
    // (non-interleaved or partially interleaved, any order): zune's
    // multi-scan baseline path gets pixels wrong depending on size and
    // data, even at 4:4:4, or fails on tables defined between scans.
    if !header.progressive && facts.scans > 1 {
        return refuse("sequential JPEG with more than one scan (non-interleaved components)");
    }
    let components: Vec<(u8, u8, u8)> = header.frame.components().collect();
    let h_max = components.iter().map(|c| c.0).max().unwrap_or(1);
    let v_max = components.iter().map(|c| c.1).max().unwrap_or(1);
    if components.iter().any(|c| c.0 == 3) {
        return refuse("horizontal sampling factor 3");
    }
    if components.len() > 1 && components[0].0 < h_max {
        return refuse("chroma sampled more finely than luma horizontally");
    }
    if components.iter().any(|c| c.1 > 1 && c.1 < v_max) {
        return refuse("a vertical sampling factor between 1 and the largest");
    }
    // libjpeg-turbo (and Pillow) estimate the missing low bits of such
    // files from neighbouring blocks; zune-jpeg leaves them zero (mean
    // differences of 2-3, up to 14).
    if facts.unrefined {
        return refuse(
            "progressive JPEG whose scans stop before full precision (libjpeg block smoothing)",
        );
    }
    let late = facts.tables_after_scan & !header.tables_before_scan;
    if components.iter().any(|c| late & (1 << c.2) != 0) {
        return refuse("a quantisation table first defined between scans");
    }
    Ok(())
}

/// Decodes the rebuilt stream into `dst` (resized as needed): 1 byte per
/// pixel for single-component files, else RGB (zune converts YCbCr, and
/// CMYK/YCCK with the Adobe inverted convention, as Pillow does). Returns
/// the channel count, and with `strict == false` the warning of a stream
/// that decoded only in zune-jpeg's lenient mode.
pub(crate) fn decode(
    stream: &[u8],
    header: &JpegHeader<'_>,
    max_side: usize,
    dst: &mut Vec<u8>,
    strict: bool,
) -> Result<(usize, Option<String>), RowError> {
    match decode_with(stream, header, max_side, dst, true) {
        Ok(channels) => Ok((channels, None)),
        // Header-level and internal problems are not recoverable.
        Err(e @ (RowError::TruncatedJpeg(_) | RowError::JpegDecode(_))) if !strict => {
            let channels =
                decode_with(stream, header, max_side, dst, false).map_err(|_| e.clone())?;
            Ok((channels, Some(format!("decoded with recovery: {e}"))))
        }
        Err(e) => Err(e),
    }
}

fn decode_with(
    stream: &[u8],
    header: &JpegHeader<'_>,
    max_side: usize,
    dst: &mut Vec<u8>,
    strict: bool,
) -> Result<usize, RowError> {
    let (colorspace, channels) = if header.components == 1 {
        (ColorSpace::Luma, 1)
    } else {
        (ColorSpace::RGB, 3)
    };
    let options = DecoderOptions::default()
        .set_strict_mode(strict)
        .set_max_width(max_side)
        .set_max_height(max_side)
        .jpeg_set_out_colorspace(colorspace);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(stream), options);
    decoder.decode_headers().map_err(decode_error)?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| RowError::Internal("JPEG headers decoded but no dimensions".into()))?;
    if (w as u64, h as u64) != (u64::from(header.width), u64::from(header.height)) {
        return Err(RowError::Internal(format!(
            "JPEG frame size {}x{} read as {w}x{h} by the decoder",
            header.width, header.height
        )));
    }
    let len = w * h * channels;
    if decoder.output_buffer_size() != Some(len) {
        return Err(RowError::Internal(
            "unexpected JPEG output buffer size".into(),
        ));
    }
    if dst.len() < len {
        dst.resize(len, 0);
    }
    decoder.decode_into(&mut dst[..len]).map_err(decode_error)?;
    Ok(channels)
}

fn decode_error(e: DecodeErrors) -> RowError {
    let msg = match &e {
        DecodeErrors::ExhaustedData => {
            return truncated("scan data ends before the image is complete")
        }
        DecodeErrors::Format(s) => s.clone(),
        DecodeErrors::FormatStatic(s) => (*s).to_string(),
        other => format!("{other:?}"),
    };
    if msg.contains("Premature end of buffer") || msg.contains("Not enough bytes") {
        return truncated(msg.trim());
    }
    RowError::JpegDecode(msg.trim().to_string())
}
