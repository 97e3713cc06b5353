//! WebP: a bounds-checked RIFF walk of our own, then pixels from
//! `image-webp` (image-rs, pure Rust).
//!
//! The walk finds every size the file claims before any pixel memory
//! exists: the canvas (VP8X), the bitstream's own frame size (the 14-bit
//! sizes in a VP8 key frame or VP8L header) and, for an animation, the
//! first frame's rectangle. The canvas is what Pillow reports and what the
//! limits check; a bitstream whose size differs from the canvas (or, in an
//! animation, from its frame) is refused before `image-webp` would allocate
//! for it, so a 16383×16383 VP8 frame hidden under a 1×1 canvas costs
//! nothing.
//!
//! Pixels follow Pillow (libwebp): lossy frames use libwebp's default
//! "fancy" (bilinear) chroma upsampling, alpha is dropped without
//! compositing, an animation decodes as its first frame on a transparent
//! black canvas. Orientation, as Pillow's `exif_transpose`: the `EXIF`
//! chunk's Orientation tag, else XMP `tiff:Orientation` from the `XMP `
//! chunk.

use std::io::Cursor;

use image_webp::{DecodingError, WebPDecoder};

use crate::error::RowError;
use crate::exif::orientation_from_metadata;

const FORMAT: &str = "WebP";

/// What the RIFF walk learnt: sizes and where the metadata is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WebpHeader<'a> {
    /// Canvas width in pixels.
    pub width: u32,
    /// Canvas height in pixels.
    pub height: u32,
    exif: Option<&'a [u8]>,
    xmp: Option<&'a [u8]>,
}

impl WebpHeader<'_> {
    /// The raw orientation value by Pillow's precedence (EXIF, then XMP),
    /// reading no metadata chunk larger than `limit` bytes.
    pub(crate) fn orientation(&self, limit: usize) -> Result<Option<u16>, RowError> {
        orientation_from_metadata(self.exif, self.xmp, limit)
    }
}

fn name(fourcc: &[u8]) -> String {
    String::from_utf8_lossy(fourcc).trim_end().to_string()
}

fn u24(b: &[u8]) -> u32 {
    u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16
}

/// One RIFF chunk: its FourCC and payload (without the pad byte).
struct Chunk<'a> {
    fourcc: [u8; 4],
    data: &'a [u8],
}

/// The chunks of `body` in order, each checked against the data; the
/// iterator yields an error once and then stops.
fn chunks(body: &[u8]) -> impl Iterator<Item = Result<Chunk<'_>, RowError>> {
    let mut pos = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= body.len() {
            return None;
        }
        let Some(head) = body.get(pos..pos + 8) else {
            failed = true;
            return Some(Err(RowError::truncated(
                FORMAT,
                "data ends inside a chunk header",
            )));
        };
        let fourcc: [u8; 4] = head[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        let start = pos + 8;
        let Some(data) = start.checked_add(len).and_then(|end| body.get(start..end)) else {
            failed = true;
            return Some(Err(RowError::truncated(
                FORMAT,
                format!(
                    "{} chunk of {len} bytes runs past the end of the data",
                    name(&fourcc)
                ),
            )));
        };
        // Chunks are padded to an even size; a missing final pad byte is
        // tolerated (libwebp does too).
        pos = start + len + (len & 1);
        Some(Ok(Chunk { fourcc, data }))
    })
}

/// The frame size a VP8 (lossy) or VP8L (lossless) bitstream declares.
fn bitstream_size(chunk: &Chunk<'_>) -> Result<(u32, u32), RowError> {
    match &chunk.fourcc {
        b"VP8 " => {
            let d = chunk.data;
            let head = d
                .get(..10)
                .ok_or_else(|| RowError::truncated(FORMAT, "VP8 frame header cut short"))?;
            if head[0] & 1 != 0 {
                return Err(RowError::corrupt(
                    FORMAT,
                    "VP8 bitstream does not start with a key frame",
                ));
            }
            if head[3..6] != [0x9d, 0x01, 0x2a] {
                return Err(RowError::corrupt(FORMAT, "VP8 start code missing"));
            }
            let w = u32::from(u16::from_le_bytes([head[6], head[7]]) & 0x3FFF);
            let h = u32::from(u16::from_le_bytes([head[8], head[9]]) & 0x3FFF);
            Ok((w, h))
        }
        b"VP8L" => {
            let d = chunk.data;
            let head = d
                .get(..5)
                .ok_or_else(|| RowError::truncated(FORMAT, "VP8L header cut short"))?;
            if head[0] != 0x2f {
                return Err(RowError::corrupt(FORMAT, "VP8L signature byte is not 0x2f"));
            }
            let bits = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
            let size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1);
            if size.0 == 1 << 14 || size.1 == 1 << 14 {
                // image-webp 0.2.4 wraps a 16384-pixel side to 0.
                return Err(RowError::unsupported(
                    FORMAT,
                    format!("lossless image {}x{} (a 16384-pixel side)", size.0, size.1),
                ));
            }
            Ok(size)
        }
        other => Err(RowError::corrupt(
            FORMAT,
            format!(
                "{} chunk where a VP8 or VP8L bitstream was expected",
                name(other)
            ),
        )),
    }
}

/// The bitstream chunk of an animation frame, read as image-webp reads
/// it: the first subchunk is VP8 or VP8L, or ALPH immediately followed by
/// VP8 (image-webp decodes whatever follows ALPH as VP8, so anything else
/// there is refused rather than trusted).
fn frame_bitstream<'a>(
    mut frame: impl Iterator<Item = Result<Chunk<'a>, RowError>>,
) -> Result<Chunk<'a>, RowError> {
    let missing = || RowError::corrupt(FORMAT, "animation frame has no VP8 or VP8L bitstream");
    let first = frame.next().ok_or_else(missing)??;
    match &first.fourcc {
        b"VP8 " | b"VP8L" => Ok(first),
        b"ALPH" => {
            let next = frame.next().ok_or_else(missing)??;
            if &next.fourcc == b"VP8 " {
                Ok(next)
            } else {
                Err(RowError::corrupt(
                    FORMAT,
                    format!("{} chunk after ALPH, not VP8", name(&next.fourcc)),
                ))
            }
        }
        other => Err(RowError::corrupt(
            FORMAT,
            format!(
                "animation frame starts with {}, not ALPH, VP8 or VP8L",
                name(other)
            ),
        )),
    }
}

/// Walks the RIFF container (`data` starts with `RIFF....WEBP`). Reads
/// sizes and finds metadata; allocates nothing.
pub(crate) fn parse_header(data: &[u8]) -> Result<WebpHeader<'_>, RowError> {
    let riff_len = data
        .get(4..8)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| RowError::truncated(FORMAT, "data ends inside the RIFF header"))?;
    if riff_len < 4 {
        return Err(RowError::corrupt(
            FORMAT,
            format!("RIFF size {riff_len} is too small"),
        ));
    }
    // Bytes after the RIFF payload are ignored (as libwebp does); a payload
    // that claims more than there is is truncated.
    let body = data.get(12..8 + riff_len).ok_or_else(|| {
        RowError::truncated(
            FORMAT,
            format!("RIFF payload of {riff_len} bytes runs past the data"),
        )
    })?;
    let mut all = chunks(body);
    let first = all
        .next()
        .ok_or_else(|| RowError::truncated(FORMAT, "no chunk after the WEBP signature"))??;
    match &first.fourcc {
        b"VP8 " | b"VP8L" => {
            let (width, height) = bitstream_size(&first)?;
            check_nonzero(width, height)?;
            Ok(WebpHeader {
                width,
                height,
                exif: None,
                xmp: None,
            })
        }
        b"VP8X" => {
            let d = first
                .data
                .get(..10)
                .ok_or_else(|| RowError::truncated(FORMAT, "VP8X chunk cut short"))?;
            let animated = d[0] & 0x02 != 0;
            let width = u24(&d[4..7]) + 1;
            let height = u24(&d[7..10]) + 1;
            let mut header = WebpHeader {
                width,
                height,
                exif: None,
                xmp: None,
            };
            let mut image: Option<(u32, u32)> = None;
            for chunk in all {
                let chunk = chunk?;
                match &chunk.fourcc {
                    b"EXIF" => {
                        header.exif.get_or_insert(chunk.data);
                    }
                    b"XMP " => {
                        header.xmp.get_or_insert(chunk.data);
                    }
                    b"ANMF" if animated && image.is_none() => {
                        let f = chunk
                            .data
                            .get(..16)
                            .ok_or_else(|| RowError::truncated(FORMAT, "ANMF chunk cut short"))?;
                        let (x, y) = (u24(&f[0..3]) * 2, u24(&f[3..6]) * 2);
                        let (w, h) = (u24(&f[6..9]) + 1, u24(&f[9..12]) + 1);
                        if u64::from(x) + u64::from(w) > u64::from(width)
                            || u64::from(y) + u64::from(h) > u64::from(height)
                        {
                            return Err(RowError::corrupt(FORMAT, format!(
                                "first frame {w}x{h} at ({x}, {y}) lies outside the {width}x{height} canvas"
                            )));
                        }
                        let bits = frame_bitstream(chunks(&chunk.data[16..]))?;
                        check_frame(bitstream_size(&bits)?, (w, h))?;
                        image = Some((w, h));
                    }
                    b"VP8 " | b"VP8L" if !animated && image.is_none() => {
                        let size = bitstream_size(&chunk)?;
                        check_frame(size, (width, height))?;
                        image = Some(size);
                    }
                    _ => {}
                }
            }
            if image.is_none() {
                return Err(RowError::corrupt(
                    FORMAT,
                    if animated {
                        "animation has no ANMF frame"
                    } else {
                        "no VP8 or VP8L bitstream"
                    },
                ));
            }
            Ok(header)
        }
        other => Err(RowError::corrupt(
            FORMAT,
            format!("first chunk is {}, not VP8, VP8L or VP8X", name(other)),
        )),
    }
}

fn check_nonzero(width: u32, height: u32) -> Result<(), RowError> {
    if width == 0 || height == 0 {
        return Err(RowError::corrupt(
            FORMAT,
            format!("image size {width}x{height} has a zero side"),
        ));
    }
    Ok(())
}

/// A bitstream must be exactly the size of the frame (or canvas) it fills.
fn check_frame(bitstream: (u32, u32), frame: (u32, u32)) -> Result<(), RowError> {
    if bitstream != frame {
        return Err(RowError::corrupt(
            FORMAT,
            format!(
                "bitstream is {}x{} but its frame is {}x{}",
                bitstream.0, bitstream.1, frame.0, frame.1
            ),
        ));
    }
    Ok(())
}

/// Decodes `data` (whose header [`parse_header`] read and the limits
/// passed) into `dst` as 8-bit RGB, alpha dropped. Returns the channel
/// count (3).
pub(crate) fn decode(
    data: &[u8],
    header: &WebpHeader<'_>,
    dst: &mut Vec<u8>,
) -> Result<usize, RowError> {
    let mut decoder = WebPDecoder::new(Cursor::new(data)).map_err(decode_error)?;
    if decoder.dimensions() != (header.width, header.height) {
        return Err(RowError::Internal(format!(
            "WebP canvas {}x{} read as {:?} by the decoder",
            header.width,
            header.height,
            decoder.dimensions()
        )));
    }
    let channels = if decoder.has_alpha() { 4 } else { 3 };
    let len = decoder
        .output_buffer_size()
        .ok_or_else(|| RowError::Internal("WebP output size overflows".into()))?;
    // Everything image-webp allocates for pixels is sized by the canvas and
    // frame sizes the RIFF walk checked (its memory limit only covers
    // metadata chunks, which are not read here).
    if dst.len() < len {
        dst.resize(len, 0);
    }
    decoder.read_image(&mut dst[..len]).map_err(decode_error)?;
    if channels == 4 {
        // Drop alpha in place: the write index never passes the read index.
        let pixels = len / 4;
        for px in 0..pixels {
            dst.copy_within(px * 4..px * 4 + 3, px * 3);
        }
    }
    Ok(3)
}

fn decode_error(e: DecodingError) -> RowError {
    match e {
        DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            RowError::truncated(FORMAT, "bitstream ends early")
        }
        DecodingError::UnsupportedFeature(f) => RowError::unsupported(FORMAT, f),
        DecodingError::MemoryLimitExceeded | DecodingError::ImageTooLarge => {
            RowError::decode_failed(FORMAT, e.to_string())
        }
        other => RowError::corrupt(FORMAT, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn riff(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
        let mut body = b"WEBP".to_vec();
        for (fourcc, data) in chunks {
            body.extend_from_slice(*fourcc);
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            if data.len() % 2 == 1 {
                body.push(0);
            }
        }
        let mut v = b"RIFF".to_vec();
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    fn vp8(w: u16, h: u16) -> Vec<u8> {
        let mut d = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        d.extend_from_slice(&w.to_le_bytes());
        d.extend_from_slice(&h.to_le_bytes());
        d.extend_from_slice(&[0; 16]);
        d
    }

    fn vp8x(flags: u8, w: u32, h: u32) -> Vec<u8> {
        let mut d = vec![flags, 0, 0, 0];
        d.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
        d.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
        d
    }

    #[test]
    fn sizes_come_from_the_container_and_bitstream() {
        let simple = riff(&[(b"VP8 ", vp8(640, 480))]);
        let h = parse_header(&simple).unwrap();
        assert_eq!((h.width, h.height), (640, 480));

        let mut lossless = vec![0x2f];
        lossless.extend_from_slice(&((99u32) | (49 << 14)).to_le_bytes());
        let lossless = riff(&[(b"VP8L", lossless)]);
        let h = parse_header(&lossless).unwrap();
        assert_eq!((h.width, h.height), (100, 50));

        let extended = riff(&[
            (b"VP8X", vp8x(0x08, 640, 480)),
            (b"VP8 ", vp8(640, 480)),
            (b"EXIF", b"II*\0".to_vec()),
        ]);
        let h = parse_header(&extended).unwrap();
        assert_eq!((h.width, h.height), (640, 480));
        assert_eq!(h.exif, Some(&b"II*\0"[..]));
    }

    #[test]
    fn orientation_reads_exif_then_xmp_within_the_metadata_limit() {
        // IFD0 with one entry: Orientation (0x0112), SHORT, count 1, value 6.
        let mut exif = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0".to_vec();
        exif.extend_from_slice(&[0; 4]);
        let xmp = b"<x:xmpmeta><rdf:Description tiff:Orientation=\"3\"/></x:xmpmeta>".to_vec();
        let file = |exif: Option<&Vec<u8>>| {
            let mut chunks = vec![(b"VP8X", vp8x(0x0C, 64, 64)), (b"VP8 ", vp8(64, 64))];
            if let Some(e) = exif {
                chunks.push((b"EXIF", e.clone()));
            }
            chunks.push((b"XMP ", xmp.clone()));
            riff(&chunks)
        };
        let both = file(Some(&exif));
        assert_eq!(
            parse_header(&both).unwrap().orientation(1024).unwrap(),
            Some(6)
        );
        let xmp_only = file(None);
        assert_eq!(
            parse_header(&xmp_only).unwrap().orientation(1024).unwrap(),
            Some(3)
        );
        let e = parse_header(&both).unwrap().orientation(16).unwrap_err();
        assert_eq!(
            e.to_string(),
            "EXIF metadata of 26 bytes is over the 16 byte metadata limit"
        );
    }

    #[test]
    fn a_bitstream_bigger_than_its_canvas_is_refused_before_decoding() {
        let forged = riff(&[(b"VP8X", vp8x(0, 1, 1)), (b"VP8 ", vp8(16383, 16383))]);
        let e = parse_header(&forged).unwrap_err();
        assert_eq!(
            e.to_string(),
            "corrupt WebP: bitstream is 16383x16383 but its frame is 1x1"
        );
    }

    #[test]
    fn an_animation_frame_must_fit_its_canvas() {
        let mut anmf = anmf_head();
        let inner = riff(&[(b"VP8 ", vp8(16, 16))]);
        anmf.extend_from_slice(&inner[12..]);
        let ok = riff(&[
            (b"VP8X", vp8x(0x02, 16, 16)),
            (b"ANIM", vec![0; 6]),
            (b"ANMF", anmf.clone()),
        ]);
        assert!(parse_header(&ok).is_ok());
        let small = riff(&[
            (b"VP8X", vp8x(0x02, 8, 8)),
            (b"ANIM", vec![0; 6]),
            (b"ANMF", anmf),
        ]);
        assert!(parse_header(&small)
            .unwrap_err()
            .to_string()
            .contains("outside the 8x8 canvas"));
        // ALPH, then a chunk image-webp would decode as VP8 whatever its
        // name (here a 16383x16383 frame): refused before decoding.
        let mut hidden = anmf_head();
        let inner = riff(&[
            (b"ALPH", vec![0; 4]),
            (b"JUNK", vp8(16383, 16383)),
            (b"VP8 ", vp8(16, 16)),
        ]);
        hidden.extend_from_slice(&inner[12..]);
        let hidden = riff(&[
            (b"VP8X", vp8x(0x12, 16, 16)),
            (b"ANIM", vec![0; 6]),
            (b"ANMF", hidden),
        ]);
        assert_eq!(
            parse_header(&hidden).unwrap_err().to_string(),
            "corrupt WebP: JUNK chunk after ALPH, not VP8"
        );
    }

    /// An ANMF payload's 16-byte head: a 16x16 frame at (0, 0).
    fn anmf_head() -> Vec<u8> {
        let mut anmf = Vec::new();
        for v in [0u32, 0, 15, 15, 100] {
            anmf.extend_from_slice(&v.to_le_bytes()[..3]);
        }
        anmf.push(0);
        anmf
    }

    #[test]
    fn damaged_containers_are_named() {
        let simple = riff(&[(b"VP8 ", vp8(64, 64))]);
        for cut in [9, 14, 20, 25] {
            let e = parse_header(&simple[..cut]).unwrap_err();
            assert!(e.to_string().starts_with("truncated WebP"), "{cut}: {e}");
        }
        let wrong = riff(&[(b"JUNK", vec![1, 2])]);
        assert_eq!(
            parse_header(&wrong).unwrap_err().to_string(),
            "corrupt WebP: first chunk is JUNK, not VP8, VP8L or VP8X"
        );
        let huge_len = {
            let mut v = riff(&[(b"VP8 ", vp8(64, 64))]);
            v[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
            v
        };
        assert!(parse_header(&huge_len)
            .unwrap_err()
            .to_string()
            .starts_with("truncated WebP"));
    }
}
