//! GIF: the first frame, from the `gif` crate (image-rs), as Pillow shows it.
//!
//! Pillow's size for a GIF is the logical screen, grown to hold the first
//! frame when that frame reaches past it (`GifImagePlugin._seek`), so the
//! limits are checked on that canvas, after reading the screen descriptor
//! and the first image descriptor and before any pixel memory exists: a
//! 1×1 screen announcing a 65535×65535 frame is refused from its header.
//!
//! Pixels, as Pillow's frame 0 then `convert('RGB')`: the canvas starts as
//! the frame's transparent index (index 0 without one), the frame's
//! indices are pasted at its offset, and every index becomes its colour in
//! the frame's palette (local, else global); an index past the palette's
//! end is black; transparency is ignored (alpha dropped). A palette that is
//! exactly the gray ramp `(i, i, i)` is no palette for Pillow (mode `L`),
//! so such indices are their own gray value.

use gif::{ColorOutput, DecodeOptions, DecodingError, MemoryLimit};

use crate::error::RowError;

const FORMAT: &str = "GIF";

/// The sizes Pillow reports, known before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GifHeader {
    /// Canvas width: the logical screen's, or more for a wider first frame.
    pub width: u32,
    /// Canvas height.
    pub height: u32,
}

fn error(e: DecodingError) -> RowError {
    match e {
        DecodingError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            RowError::truncated(FORMAT, "data ends early")
        }
        DecodingError::Io(io) => RowError::truncated(FORMAT, io.to_string()),
        DecodingError::MemoryLimit | DecodingError::OutOfMemory => {
            RowError::decode_failed(FORMAT, e.to_string())
        }
        // The crate reports a file that stops early as a format error.
        other
            if other
                .to_string()
                .to_ascii_lowercase()
                .contains("end of file") =>
        {
            RowError::truncated(FORMAT, "data ends early")
        }
        other => RowError::corrupt(FORMAT, other.to_string()),
    }
}

/// Options shared by the header walk and the decode: indices out, no
/// allocation larger than `limit` bytes for a frame.
fn options(limit: u64) -> DecodeOptions {
    let mut options = DecodeOptions::new();
    options.set_color_output(ColorOutput::Indexed);
    // Pillow skips extensions it does not know; so does the header walk.
    options.allow_unknown_blocks(true);
    options.set_memory_limit(
        std::num::NonZeroU64::new(limit.max(1)).map_or(MemoryLimit::Unlimited, MemoryLimit::Bytes),
    );
    options
}

/// Reads the screen and first image descriptors by walking the block
/// structure (no decoder, no allocation): a file that stops right after a
/// huge frame's descriptor (Pillow's own GIF bomb) still has its size.
pub(crate) fn parse_header(data: &[u8]) -> Result<GifHeader, RowError> {
    let cut = |what: &str| RowError::truncated(FORMAT, format!("data ends inside {what}"));
    let u16_at = |at: usize| {
        data.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let screen_w = u32::from(u16_at(6).ok_or_else(|| cut("the screen descriptor"))?);
    let screen_h = u32::from(u16_at(8).ok_or_else(|| cut("the screen descriptor"))?);
    let flags = *data.get(10).ok_or_else(|| cut("the screen descriptor"))?;
    let mut pos = 13;
    if flags & 0x80 != 0 {
        pos += 3 << ((flags & 7) + 1);
    }
    loop {
        match data.get(pos) {
            // Extension: label, then data sub-blocks up to an empty one.
            Some(0x21) => {
                pos += 2;
                loop {
                    let len = usize::from(*data.get(pos).ok_or_else(|| cut("an extension"))?);
                    pos += 1 + len;
                    if len == 0 {
                        break;
                    }
                }
            }
            Some(0x2C) => {
                let d =
                    |i: usize| u16_at(pos + 1 + 2 * i).ok_or_else(|| cut("the image descriptor"));
                let (left, top, w, h) = (d(0)?, d(1)?, d(2)?, d(3)?);
                let width = screen_w.max(u32::from(left) + u32::from(w));
                let height = screen_h.max(u32::from(top) + u32::from(h));
                if width == 0 || height == 0 {
                    return Err(RowError::corrupt(
                        FORMAT,
                        format!("image size {width}x{height} has a zero side"),
                    ));
                }
                return Ok(GifHeader { width, height });
            }
            Some(0x3B) => return Err(RowError::corrupt(FORMAT, "no image in the file")),
            Some(other) => {
                return Err(RowError::corrupt(
                    FORMAT,
                    format!("unknown block 0x{other:02x}"),
                ))
            }
            None => return Err(cut("the blocks before the first image")),
        }
    }
}

/// Decodes the first frame of `data` into `dst` as 8-bit RGB on the
/// canvas [`parse_header`] sized (the limits already checked). Returns the
/// channel count (3).
pub(crate) fn decode(
    data: &[u8],
    header: &GifHeader,
    dst: &mut Vec<u8>,
) -> Result<usize, RowError> {
    let (cw, ch) = (header.width as usize, header.height as usize);
    let mut decoder = options((cw * ch) as u64).read_info(data).map_err(error)?;
    let frame = decoder
        .next_frame_info()
        .map_err(error)?
        .ok_or_else(|| RowError::Internal("GIF frame vanished after the header walk".into()))?;
    let (left, top) = (usize::from(frame.left), usize::from(frame.top));
    let (fw, fh) = (usize::from(frame.width), usize::from(frame.height));
    if left + fw > cw || top + fh > ch {
        return Err(RowError::Internal(format!(
            "GIF frame {fw}x{fh} at ({left}, {top}) read differently from the header walk"
        )));
    }
    let fill = frame.transparent.unwrap_or(0);
    let local = frame.palette.clone();
    // The indices go in the first third of `dst`, then become RGB in place.
    let len = cw * ch * 3;
    if dst.len() < len {
        dst.resize(len, 0);
    }
    let (indices, _) = dst.split_at_mut(cw * ch);
    if (fw, fh) == (cw, ch) {
        decoder.read_into_buffer(indices).map_err(error)?;
    } else {
        indices.fill(fill);
        let mut frame_px = vec![0u8; fw * fh];
        decoder.read_into_buffer(&mut frame_px).map_err(error)?;
        if fw > 0 {
            for (y, row) in frame_px.chunks_exact(fw).enumerate() {
                let at = (top + y) * cw + left;
                indices[at..at + fw].copy_from_slice(row);
            }
        }
    }
    let palette: &[u8] = match &local {
        Some(p) => p,
        None => decoder.global_palette().unwrap_or_default(),
    };
    let mut lut = [[0u8; 3]; 256];
    let gray_ramp = palette
        .chunks_exact(3)
        .enumerate()
        .all(|(i, c)| c == [i as u8; 3]);
    for (i, entry) in lut.iter_mut().enumerate() {
        *entry = match palette.get(i * 3..i * 3 + 3) {
            Some(c) if !gray_ramp => [c[0], c[1], c[2]],
            _ if gray_ramp => [i as u8; 3],
            _ => [0; 3],
        };
    }
    // Expand backwards so no index is overwritten before it is read.
    for px in (0..cw * ch).rev() {
        let c = lut[usize::from(dst[px])];
        dst[px * 3..px * 3 + 3].copy_from_slice(&c);
    }
    Ok(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GIF89a with a `sw`×`sh` screen and one `fw`×`fh` frame at (x, y),
    /// a two-colour global palette, all pixels index 1.
    pub(crate) fn gif(sw: u16, sh: u16, x: u16, y: u16, fw: u16, fh: u16) -> Vec<u8> {
        let mut v = b"GIF89a".to_vec();
        v.extend_from_slice(&sw.to_le_bytes());
        v.extend_from_slice(&sh.to_le_bytes());
        v.extend_from_slice(&[0x80, 0, 0]); // global table of 2 entries
        v.extend_from_slice(&[10, 20, 30, 200, 100, 50]);
        v.push(b',');
        for n in [x, y, fw, fh] {
            v.extend_from_slice(&n.to_le_bytes());
        }
        v.push(0);
        // LZW, minimum code size 2: clear, then index 1 repeated, end.
        let n = usize::from(fw) * usize::from(fh);
        let mut bits: Vec<bool> = Vec::new();
        let mut push = |code: u32, width: u32| {
            for i in 0..width {
                bits.push(code >> i & 1 == 1);
            }
        };
        // Clear every 2 codes keeps the code width at 3 bits.
        for _ in 0..n {
            push(4, 3);
            push(1, 3);
        }
        push(5, 3);
        let bytes: Vec<u8> = bits
            .chunks(8)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u8, |b, (i, &on)| b | (u8::from(on) << i))
            })
            .collect();
        v.push(2);
        for block in bytes.chunks(255) {
            v.push(block.len() as u8);
            v.extend_from_slice(block);
        }
        v.push(0);
        v.push(b';');
        v
    }

    #[test]
    fn canvas_grows_to_the_first_frame_like_pillow() {
        assert_eq!(
            parse_header(&gif(4, 4, 0, 0, 4, 4)).unwrap(),
            GifHeader {
                width: 4,
                height: 4
            }
        );
        // Tiny screen, huge frame, nothing after the descriptor: the size
        // is known without decoding.
        let mut forged = gif(1, 1, 0, 0, 1, 1);
        let at = 6 + 7 + 6 + 1 + 4;
        forged[at..at + 4].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
        forged.truncate(at + 5);
        assert_eq!(
            parse_header(&forged).unwrap(),
            GifHeader {
                width: 65535,
                height: 65535
            }
        );
    }

    #[test]
    fn first_frame_on_its_canvas() {
        let data = gif(3, 2, 1, 1, 2, 1);
        let header = parse_header(&data).unwrap();
        let mut out = Vec::new();
        assert_eq!(decode(&data, &header, &mut out).unwrap(), 3);
        let bg = [10, 20, 30];
        let fg = [200, 100, 50];
        let want: Vec<u8> = [bg, bg, bg, bg, fg, fg].concat();
        assert_eq!(&out[..18], &want[..]);
    }

    #[test]
    fn truncation_is_named() {
        let data = gif(8, 8, 0, 0, 8, 8);
        for cut in [8, 14, 22, data.len() - 4] {
            let e = parse_header(&data[..cut])
                .and_then(|h| decode(&data[..cut], &h, &mut Vec::new()))
                .unwrap_err();
            assert!(
                matches!(e, RowError::Truncated { .. } | RowError::Corrupt { .. }),
                "{cut}: {e}"
            );
        }
    }
}
