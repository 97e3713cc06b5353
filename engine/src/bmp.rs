//! BMP: pixels from the `image` crate's BMP codec (image-rs, pure Rust;
//! only that codec is built): 1/4/8-bit palette, 16-bit (5-5-5 and
//! bitfields), 24 and 32-bit, RLE4/RLE8, bottom-up and top-down rows,
//! OS/1.x (12-byte) and Windows V1/V3–V5 headers (the OS/2 2.x 16- and
//! 64-byte ones are error rows naming the header). (zune-bmp, the first candidate, decodes
//! 16-bit rows with a wrong stride and fills a truncated file with zeros.)
//!
//! The size is read from the info header (fixed offsets) before the
//! decoder is made, so the limits are checked with no allocation at all.
//! Pixels as Pillow's `convert('RGB')`: palette entries become their
//! colours, alpha (32-bit, bitfields) is dropped. BMP has no orientation.

use std::io::Cursor;

use image::codecs::bmp::BmpDecoder;
use image::error::ImageError;
use image::{ColorType, ImageDecoder};

use crate::error::RowError;

const FORMAT: &str = "BMP";

/// The info header's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BmpHeader {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels (the absolute value: negative means top-down).
    pub height: u32,
}

/// Reads width and height from the file header + info header (`data`
/// starts with `BM`).
pub(crate) fn parse_header(data: &[u8]) -> Result<BmpHeader, RowError> {
    let u32_at = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    };
    let u16_at = |at: usize| {
        data.get(at..at + 2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("2")))
    };
    let cut = || RowError::truncated(FORMAT, "data ends inside the headers");
    let info_size = u32_at(14).ok_or_else(cut)?;
    let (width, height) = match info_size {
        // OS/2 1.x BITMAPCOREHEADER: 16-bit unsigned sizes.
        12 => (
            u32::from(u16_at(18).ok_or_else(cut)?),
            u32::from(u16_at(20).ok_or_else(cut)?),
        ),
        16 | 40 | 52 | 56 | 64 | 108 | 124 => {
            let w = u32_at(18).ok_or_else(cut)? as i32;
            let h = u32_at(22).ok_or_else(cut)? as i32;
            if w < 0 {
                return Err(RowError::corrupt(FORMAT, format!("negative width {w}")));
            }
            (w.unsigned_abs(), h.unsigned_abs())
        }
        other => {
            return Err(RowError::unsupported(
                FORMAT,
                format!("info header of {other} bytes"),
            ))
        }
    };
    if width == 0 || height == 0 {
        return Err(RowError::corrupt(
            FORMAT,
            format!("image size {width}x{height} has a zero side"),
        ));
    }
    Ok(BmpHeader { width, height })
}

/// Decodes `data` into `dst` as 8-bit RGB. Returns the channel count (3).
pub(crate) fn decode(
    data: &[u8],
    header: &BmpHeader,
    dst: &mut Vec<u8>,
) -> Result<usize, RowError> {
    check_rle(data, header)?;
    let decoder = BmpDecoder::new(Cursor::new(data)).map_err(error)?;
    if decoder.dimensions() != (header.width, header.height) {
        return Err(RowError::Internal(format!(
            "BMP size {}x{} read as {:?} by the decoder",
            header.width,
            header.height,
            decoder.dimensions()
        )));
    }
    let in_channels = match decoder.color_type() {
        ColorType::Rgb8 => 3,
        ColorType::Rgba8 => 4,
        other => {
            return Err(RowError::unsupported(
                FORMAT,
                format!("colour type {other:?}"),
            ))
        }
    };
    let pixels = header.width as usize * header.height as usize;
    let len = pixels * in_channels;
    if decoder.total_bytes() != len as u64 {
        return Err(RowError::Internal(
            "unexpected BMP output buffer size".into(),
        ));
    }
    if dst.len() < len {
        dst.resize(len, 0);
    }
    decoder.read_image(&mut dst[..len]).map_err(error)?;
    if in_channels == 4 {
        for px in 0..pixels {
            dst.copy_within(px * 4..px * 4 + 3, px * 3);
        }
    }
    Ok(3)
}

/// Refuses an RLE file whose codes skip pixels (a delta, or a row or the
/// bitmap ended early) when palette entry 0 is not black: Pillow paints
/// skipped pixels with entry 0, the `image` crate with black, and a row
/// that differs silently is worse than an error. Skips over a black entry 0
/// decode the same either way.
fn check_rle(data: &[u8], header: &BmpHeader) -> Result<(), RowError> {
    let u32_at = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (Some(info_size), Some(compression)) = (u32_at(14), u32_at(30)) else {
        return Ok(());
    };
    let four_bit = match compression {
        1 => false,
        2 => true,
        _ => return Ok(()),
    };
    let palette = 14 + info_size as usize;
    let entry0 = data.get(palette..palette + 3);
    if entry0.is_none_or(|c| c == [0, 0, 0]) {
        return Ok(());
    }
    let start = u32_at(10).unwrap_or(0) as usize;
    let stream = data.get(start..).unwrap_or_default();
    if rle_skips_pixels(
        stream,
        u64::from(header.width),
        u64::from(header.height),
        four_bit,
    ) {
        return Err(RowError::unsupported(
            FORMAT,
            "RLE that skips pixels (delta or early end) with a non-black palette entry 0",
        ));
    }
    Ok(())
}

/// Whether an RLE4/RLE8 pixel stream leaves pixels unwritten.
fn rle_skips_pixels(stream: &[u8], width: u64, height: u64, four_bit: bool) -> bool {
    let (mut x, mut y, mut pos) = (0u64, 0u64, 0usize);
    loop {
        let (Some(&n), Some(&v)) = (stream.get(pos), stream.get(pos + 1)) else {
            return true;
        };
        pos += 2;
        if n > 0 {
            x += u64::from(n);
            continue;
        }
        match v {
            0 => {
                if x < width {
                    return true;
                }
                (x, y) = (0, y + 1);
            }
            1 => return y < height && !(y + 1 == height && x >= width),
            2 => return true,
            k => {
                x += u64::from(k);
                let bytes = if four_bit {
                    usize::from(k).div_ceil(2)
                } else {
                    usize::from(k)
                };
                pos += bytes + (bytes & 1);
            }
        }
    }
}

fn error(e: ImageError) -> RowError {
    match e {
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            RowError::truncated(FORMAT, "pixel data ends early")
        }
        ImageError::Unsupported(u) => RowError::unsupported(FORMAT, u.to_string()),
        ImageError::Limits(l) => RowError::decode_failed(FORMAT, l.to_string()),
        other => RowError::corrupt(FORMAT, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 24-bit bottom-up BMP (`height` > 0) or top-down (< 0), each pixel
    /// `(b, g, r)` = `(x, y, 7)`.
    fn bmp24(width: u32, height: i32) -> Vec<u8> {
        let rows = height.unsigned_abs();
        let stride = (width * 3).div_ceil(4) * 4;
        let size = 54 + stride * rows;
        let mut v = b"BM".to_vec();
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&54u32.to_le_bytes());
        v.extend_from_slice(&40u32.to_le_bytes());
        v.extend_from_slice(&width.to_le_bytes());
        v.extend_from_slice(&height.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&24u16.to_le_bytes());
        v.extend_from_slice(&[0; 24]);
        for stored in 0..rows {
            let y = if height > 0 {
                rows - 1 - stored
            } else {
                stored
            };
            let mut line: Vec<u8> = (0..width).flat_map(|x| [x as u8, y as u8, 7]).collect();
            line.resize(stride as usize, 0);
            v.extend_from_slice(&line);
        }
        v
    }

    #[test]
    fn both_row_orders_decode_upright() {
        for height in [3, -3] {
            let data = bmp24(5, height);
            let header = parse_header(&data).unwrap();
            assert_eq!(
                header,
                BmpHeader {
                    width: 5,
                    height: 3
                }
            );
            let mut out = Vec::new();
            assert_eq!(decode(&data, &header, &mut out).unwrap(), 3);
            for y in 0..3 {
                for x in 0..5 {
                    let at = (y * 5 + x) * 3;
                    assert_eq!(
                        &out[at..at + 3],
                        &[7, y as u8, x as u8],
                        "{height} ({x}, {y})"
                    );
                }
            }
        }
    }

    #[test]
    fn forged_sizes_are_read_before_decoding() {
        let mut data = bmp24(2, 2);
        data[18..22].copy_from_slice(&100_000u32.to_le_bytes());
        data[22..26].copy_from_slice(&(-100_000i32).to_le_bytes());
        assert_eq!(
            parse_header(&data).unwrap(),
            BmpHeader {
                width: 100_000,
                height: 100_000
            }
        );
        data[14..18].copy_from_slice(&77u32.to_le_bytes());
        assert_eq!(
            parse_header(&data).unwrap_err().to_string(),
            "unsupported BMP: info header of 77 bytes"
        );
    }

    #[test]
    fn rle_skips_are_found() {
        // Two rows of 4: a full run each (the last EOL omitted), then EOB.
        assert!(!rle_skips_pixels(&[4, 7, 0, 0, 4, 7, 0, 1], 4, 2, false));
        assert!(!rle_skips_pixels(
            &[4, 7, 0, 0, 4, 7, 0, 0, 0, 1],
            4,
            2,
            false
        ));
        // A short row, a delta, an early end.
        assert!(rle_skips_pixels(&[3, 7, 0, 0, 4, 7, 0, 1], 4, 2, false));
        assert!(rle_skips_pixels(&[0, 2, 1, 0, 0, 1], 4, 2, false));
        assert!(rle_skips_pixels(&[4, 7, 0, 1], 4, 2, false));
        // Absolute runs (RLE8: 4 bytes; RLE4: 3 pixels in 2 bytes).
        assert!(!rle_skips_pixels(
            &[0, 4, 1, 2, 3, 4, 0, 0, 4, 7, 0, 1],
            4,
            2,
            false
        ));
        assert!(!rle_skips_pixels(
            &[0, 3, 0x12, 0x30, 1, 0, 0, 0, 4, 0x11, 0, 1],
            4,
            2,
            true
        ));
    }

    #[test]
    fn truncated_pixels_are_an_error() {
        let data = bmp24(16, 16);
        let cut = &data[..data.len() / 2];
        let header = parse_header(cut).unwrap();
        let e = decode(cut, &header, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(e, RowError::Truncated { .. } | RowError::Corrupt { .. }),
            "{e}"
        );
    }
}
