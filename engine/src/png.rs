//! PNG: a bounds-checked chunk walk of our own, then pixels from zune-png.
//!
//! The walk reads IHDR first so the pixel and aspect limits are checked
//! before anything else happens (a 100000×100000 IHDR costs nothing). It
//! then copies only the chunks that define pixels -- IHDR, PLTE, tRNS,
//! IDAT, IEND, verbatim with their CRCs -- into a reused buffer for
//! zune-png. Everything else is looked at, at most, by keyword:
//!
//! - zune-png inflates every zTXt and iCCP chunk with a 1 GiB limit and
//!   copies every text chunk; dropping them makes zTXt/iCCP decompression
//!   bombs and files with thousands of text chunks cost a linear scan;
//! - APNG control chunks (acTL, fcTL, fdAT) are dropped, so an animated PNG
//!   decodes as its default image, the frame Pillow shows first;
//! - an unknown critical chunk is refused, as the PNG spec requires.
//!
//! Orientation, with Pillow's precedence: an `eXIf` chunk, else
//! ImageMagick's hex `Raw profile type exif` text chunk; if neither has an
//! Orientation tag, XMP `tiff:Orientation` from the `XML:com.adobe.xmp`
//! text chunk. Compressed metadata is inflated only when it is needed and
//! never beyond `EngineConfig::max_metadata_bytes`; metadata that is needed
//! but larger than that makes the row an error.
//!
//! Pixel conventions, matching Pillow's `convert('RGB')` (and `'L'`):
//! 16-bit samples keep their high byte (`v >> 8`); sub-byte gray is scaled
//! to 0–255; palette images become their palette colours; alpha is dropped
//! without compositing (a tRNS palette entry keeps its colour). zune-png
//! runs in strict mode: CRC and Adler-32 are verified, so a damaged chunk
//! or zlib stream is an error, and a file must end with IEND.
//!
//! One deliberate difference from Pillow: Pillow opens 16-bit grayscale as
//! mode `I;16` and its `convert('RGB')`/`('L')` *clips* values to 255,
//! which turns most 16-bit gray photos white; the engine takes the high
//! byte as for every other 16-bit PNG.

use zune_core::bit_depth::{BitDepth, ByteEndian};
use zune_core::bytestream::ZCursor;
use zune_core::options::DecoderOptions;
use zune_inflate::errors::DecodeErrorStatus;
use zune_inflate::{DeflateDecoder, DeflateOptions};
use zune_png::error::PngDecodeErrors;
use zune_png::PngDecoder;

use crate::error::RowError;
use crate::exif::{decode_hex_profile, orientation_from_tiff, orientation_from_xmp, within_limit};

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// IHDR fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PngHeader {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Where a metadata text lives and how it is stored.
#[derive(Debug, Clone, Copy)]
enum Text<'a> {
    /// Stored as is (tEXt, uncompressed iTXt).
    Plain(&'a [u8]),
    /// zlib-compressed (zTXt, compressed iTXt).
    Zlib(&'a [u8]),
}

impl Text<'_> {
    /// The text (`kind` names it in errors), inflated if need be, within
    /// `limit` bytes. `Ok(None)` when it does not inflate (damaged metadata
    /// is ignored, as Pillow ignores it); an error when it is over `limit`.
    fn bytes(
        &self,
        kind: &str,
        limit: usize,
    ) -> Result<Option<std::borrow::Cow<'_, [u8]>>, RowError> {
        match *self {
            Text::Plain(b) => within_limit(kind, b, limit).map(|b| Some(b.into())),
            Text::Zlib(z) => {
                let options = DeflateOptions::default()
                    .set_limit(limit)
                    .set_confirm_checksum(true);
                match DeflateDecoder::new_with_options(z, options).decode_zlib() {
                    Ok(text) => Ok(Some(text.into())),
                    Err(e) if matches!(e.error, DecodeErrorStatus::OutputLimitExceeded(..)) => {
                        Err(RowError::MetadataTooLarge {
                            what: format!(
                                "compressed {kind} metadata inflating past {limit} bytes"
                            ),
                            limit,
                        })
                    }
                    Err(_) => Ok(None),
                }
            }
        }
    }
}

/// Orientation metadata found by the chunk walk.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PngMetadata<'a> {
    exif: Option<&'a [u8]>,
    raw_profile_exif: Option<Text<'a>>,
    xmp: Option<Text<'a>>,
}

impl PngMetadata<'_> {
    /// The raw orientation value by Pillow's precedence, if any, reading no
    /// metadata blob larger than `limit` bytes (an error if one is needed).
    pub(crate) fn orientation(&self, limit: usize) -> Result<Option<u16>, RowError> {
        let from_exif = if let Some(tiff) = self.exif {
            orientation_from_tiff(within_limit("EXIF", tiff, limit)?)
        } else if let Some(text) = self.raw_profile_exif {
            text.bytes("EXIF", limit)?
                .and_then(|t| decode_hex_profile(&t))
                .and_then(|blob| orientation_from_tiff(&blob))
        } else {
            None
        };
        if from_exif.is_some() {
            return Ok(from_exif);
        }
        let Some(xmp) = self.xmp else {
            return Ok(None);
        };
        Ok(xmp
            .bytes("XMP", limit)?
            .and_then(|t| orientation_from_xmp(&t)))
    }
}

fn corrupt(msg: impl Into<String>) -> RowError {
    RowError::CorruptPng(msg.into())
}

fn truncated(msg: impl Into<String>) -> RowError {
    RowError::TruncatedPng(msg.into())
}

fn type_name(t: &[u8]) -> String {
    String::from_utf8_lossy(t).into_owned()
}

/// One chunk: its type, data and the whole chunk (length to CRC).
struct Chunk<'a> {
    kind: [u8; 4],
    data: &'a [u8],
    raw: &'a [u8],
}

/// Reads the chunk at `pos`, checking every length against the data.
fn chunk_at(data: &[u8], pos: usize) -> Result<Chunk<'_>, RowError> {
    let head = data
        .get(pos..pos + 8)
        .ok_or_else(|| truncated("data ends before the IEND chunk"))?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let kind = [head[4], head[5], head[6], head[7]];
    if !kind.iter().all(u8::is_ascii_alphabetic) {
        return Err(corrupt(format!(
            "invalid chunk type {:02x} {:02x} {:02x} {:02x}",
            kind[0], kind[1], kind[2], kind[3]
        )));
    }
    if len > 0x7FFF_FFFF {
        return Err(corrupt(format!(
            "{} chunk length {len} is over the PNG limit of 2^31-1",
            type_name(&kind)
        )));
    }
    let end = pos + 12 + len as usize;
    let raw = data.get(pos..end).ok_or_else(|| {
        truncated(format!(
            "{} chunk runs past the end of the data",
            type_name(&kind)
        ))
    })?;
    Ok(Chunk {
        kind,
        data: &raw[8..8 + len as usize],
        raw,
    })
}

/// Reads and validates IHDR (which must be the first chunk) from `data`,
/// which starts with the PNG signature.
pub(crate) fn parse_header(data: &[u8]) -> Result<PngHeader, RowError> {
    if data.len() < SIGNATURE.len() + 8 {
        return Err(truncated("data ends before the IHDR chunk"));
    }
    let ihdr = chunk_at(data, SIGNATURE.len())?;
    if &ihdr.kind != b"IHDR" {
        return Err(corrupt(format!(
            "first chunk is {}, not IHDR",
            type_name(&ihdr.kind)
        )));
    }
    let [w0, w1, w2, w3, h0, h1, h2, h3, depth, color, compression, filter, interlace] = *ihdr.data
    else {
        return Err(corrupt(format!(
            "IHDR is {} bytes long, not 13",
            ihdr.data.len()
        )));
    };
    let width = u32::from_be_bytes([w0, w1, w2, w3]);
    let height = u32::from_be_bytes([h0, h1, h2, h3]);
    if width == 0 || height == 0 {
        return Err(corrupt(format!(
            "image size {width}x{height} has a zero side"
        )));
    }
    if width > 0x7FFF_FFFF || height > 0x7FFF_FFFF {
        return Err(corrupt(format!(
            "image size {width}x{height} is over 2^31-1"
        )));
    }
    let depth_ok = match color {
        0 => matches!(depth, 1 | 2 | 4 | 8 | 16),
        3 => matches!(depth, 1 | 2 | 4 | 8),
        2 | 4 | 6 => matches!(depth, 8 | 16),
        other => return Err(corrupt(format!("invalid colour type {other}"))),
    };
    if !depth_ok {
        return Err(corrupt(format!(
            "bit depth {depth} is invalid for colour type {color}"
        )));
    }
    if compression != 0 || filter != 0 || interlace > 1 {
        return Err(corrupt(format!(
            "invalid IHDR methods (compression {compression}, filter {filter}, interlace {interlace})"
        )));
    }
    Ok(PngHeader { width, height })
}

/// Walks every chunk after IHDR, copying the pixel-defining ones to `out`
/// (cleared first) and noting orientation metadata. Call after
/// [`parse_header`] succeeded and the limits were checked.
pub(crate) fn filter_chunks<'a>(
    data: &'a [u8],
    out: &mut Vec<u8>,
) -> Result<PngMetadata<'a>, RowError> {
    out.clear();
    out.extend_from_slice(SIGNATURE);
    let mut meta = PngMetadata::default();
    let mut pos = SIGNATURE.len();
    let mut seen_idat = false;
    loop {
        let first = pos == SIGNATURE.len();
        let chunk = chunk_at(data, pos)?;
        pos += chunk.raw.len();
        match &chunk.kind {
            // parse_header already checked that IHDR comes first.
            b"IHDR" if first => out.extend_from_slice(chunk.raw),
            b"IHDR" => return Err(corrupt("two IHDR chunks")),
            b"PLTE" | b"tRNS" => out.extend_from_slice(chunk.raw),
            b"IDAT" => {
                seen_idat = true;
                out.extend_from_slice(chunk.raw);
            }
            b"IEND" => {
                if !seen_idat {
                    return Err(corrupt("no IDAT chunk"));
                }
                out.extend_from_slice(chunk.raw);
                return Ok(meta);
            }
            b"eXIf" => {
                meta.exif.get_or_insert(chunk.data);
            }
            b"tEXt" | b"zTXt" | b"iTXt" => note_text(&chunk, &mut meta),
            kind if kind[0].is_ascii_uppercase() => {
                return Err(RowError::UnsupportedPng(format!(
                    "unknown critical chunk {}",
                    type_name(kind)
                )))
            }
            // Ancillary chunks (gAMA, iCCP, pHYs, APNG control, ...) carry
            // nothing the engine uses.
            _ => {}
        }
    }
}

/// Records a text chunk if its keyword is one the orientation needs.
fn note_text<'a>(chunk: &Chunk<'a>, meta: &mut PngMetadata<'a>) {
    let Some(nul) = chunk.data.iter().position(|&b| b == 0) else {
        return;
    };
    let keyword = &chunk.data[..nul];
    let slot = match keyword {
        b"Raw profile type exif" => &mut meta.raw_profile_exif,
        b"XML:com.adobe.xmp" => &mut meta.xmp,
        _ => return,
    };
    if slot.is_some() {
        return;
    }
    let rest = &chunk.data[nul + 1..];
    *slot = match &chunk.kind {
        b"tEXt" => Some(Text::Plain(rest)),
        // compression method byte, then the zlib stream
        b"zTXt" => rest.get(1..).map(Text::Zlib),
        _ => {
            // iTXt: flag, method, language\0, translated keyword\0, text
            let (Some(&flag), Some(after)) = (rest.first(), rest.get(2..)) else {
                return;
            };
            let mut parts = after.splitn(3, |&b| b == 0);
            let (Some(_lang), Some(_translated), Some(text)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return;
            };
            Some(if flag == 0 {
                Text::Plain(text)
            } else {
                Text::Zlib(text)
            })
        }
    };
}

/// Decodes the filtered stream into `dst` (resized as needed) as 8-bit
/// gray or RGB with alpha dropped. Returns the channel count (1 or 3).
pub(crate) fn decode(
    stream: &[u8],
    header: &PngHeader,
    max_side: usize,
    dst: &mut Vec<u8>,
) -> Result<usize, RowError> {
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(max_side)
        .set_max_height(max_side)
        .set_byte_endian(ByteEndian::BE)
        .png_set_strip_to_8bit(false)
        .png_set_add_alpha_channel(false);
    let mut decoder = PngDecoder::new_with_options(ZCursor::new(stream), options);
    decoder.decode_headers().map_err(decode_error)?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| RowError::Internal("PNG headers decoded but no dimensions".into()))?;
    if (w as u64, h as u64) != (u64::from(header.width), u64::from(header.height)) {
        return Err(RowError::Internal(format!(
            "PNG size {}x{} read as {w}x{h} by the decoder",
            header.width, header.height
        )));
    }
    let colorspace = decoder
        .colorspace()
        .ok_or_else(|| RowError::Internal("PNG colour space unknown after headers".into()))?;
    let bytes_per_sample = match decoder.depth() {
        Some(BitDepth::Sixteen) => 2,
        Some(BitDepth::Eight) => 1,
        other => {
            return Err(RowError::UnsupportedPng(format!(
                "decoder reports bit depth {other:?}"
            )))
        }
    };
    let in_channels = colorspace.num_components();
    let out_channels = if colorspace.has_alpha() {
        in_channels - 1
    } else {
        in_channels
    };
    if !matches!(out_channels, 1 | 3) {
        return Err(RowError::UnsupportedPng(format!(
            "colour space {colorspace:?}"
        )));
    }
    let len = w * h * in_channels * bytes_per_sample;
    if decoder.output_buffer_size() != Some(len) {
        return Err(RowError::Internal(
            "unexpected PNG output buffer size".into(),
        ));
    }
    if dst.len() < len {
        dst.resize(len, 0);
    }
    decoder.decode_into(&mut dst[..len]).map_err(decode_error)?;
    // Keep the high byte of each sample (samples are big-endian) and the
    // colour channels only. The write index never passes the read index,
    // so compacting in place is safe.
    if bytes_per_sample != 1 || out_channels != in_channels {
        let stride = in_channels * bytes_per_sample;
        for px in 0..w * h {
            for c in 0..out_channels {
                dst[px * out_channels + c] = dst[px * stride + c * bytes_per_sample];
            }
        }
    }
    Ok(out_channels)
}

fn decode_error(e: PngDecodeErrors) -> RowError {
    let msg = match &e {
        PngDecodeErrors::Generic(s) => s.clone(),
        PngDecodeErrors::GenericStatic(s) => (*s).to_string(),
        other => format!("{other:?}"),
    };
    let msg = msg.trim().to_string();
    match e {
        PngDecodeErrors::BadCrc(..) => corrupt(format!("chunk {msg}")),
        PngDecodeErrors::ZlibDecodeErrors(_) => corrupt(format!(
            "damaged zlib data in IDAT: {}",
            msg.trim_start_matches("Error decoding idat chunks").trim()
        )),
        PngDecodeErrors::IoErrors(_) => truncated(msg),
        _ => RowError::PngDecode(msg),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A chunk with a correct CRC.
    pub(crate) fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut v = (data.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(data);
        let crc = crc32(&v[4..]);
        v.extend_from_slice(&crc.to_be_bytes());
        v
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn ihdr(w: u32, h: u32, depth: u8, color: u8) -> Vec<u8> {
        let mut d = w.to_be_bytes().to_vec();
        d.extend_from_slice(&h.to_be_bytes());
        d.extend_from_slice(&[depth, color, 0, 0, 0]);
        chunk(b"IHDR", &d)
    }

    fn png(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        for c in chunks {
            v.extend_from_slice(c);
        }
        v
    }

    #[test]
    fn header_checks() {
        let ok = png(&[ihdr(100_000, 100_000, 8, 6)]);
        assert_eq!(
            parse_header(&ok).unwrap(),
            PngHeader {
                width: 100_000,
                height: 100_000
            }
        );
        let msg = |d: &[u8]| parse_header(d).unwrap_err().to_string();
        assert_eq!(
            msg(SIGNATURE),
            "truncated PNG: data ends before the IHDR chunk"
        );
        assert!(msg(&png(&[ihdr(0, 5, 8, 2)])).contains("zero side"));
        assert!(msg(&png(&[ihdr(5, 5, 7, 2)])).contains("bit depth 7"));
        assert!(msg(&png(&[ihdr(5, 5, 8, 5)])).contains("colour type 5"));
        assert!(msg(&png(&[chunk(b"IDAT", &[])])).contains("not IHDR"));
        // A length field far beyond the data is refused without reading it.
        let mut huge = png(&[ihdr(5, 5, 8, 2)]);
        huge[8..12].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
        assert!(msg(&huge).contains("over the PNG limit"));
    }

    #[test]
    fn chunk_filter_keeps_pixels_and_notes_metadata() {
        let mut itxt = b"XML:com.adobe.xmp\0\0\0\0\0".to_vec();
        itxt.extend_from_slice(br#"<x tiff:Orientation="6"/>"#);
        let data = png(&[
            ihdr(1, 1, 8, 0),
            chunk(b"tEXt", b"Comment\0hello"),
            chunk(b"iTXt", &itxt),
            chunk(b"acTL", &[0; 8]),
            chunk(b"IDAT", &[1, 2, 3]),
            chunk(b"IEND", &[]),
        ]);
        let mut out = Vec::new();
        let meta = filter_chunks(&data, &mut out).unwrap();
        assert_eq!(meta.orientation(1 << 20).unwrap(), Some(6));
        let expected = png(&[
            ihdr(1, 1, 8, 0),
            chunk(b"IDAT", &[1, 2, 3]),
            chunk(b"IEND", &[]),
        ]);
        assert_eq!(out, expected);
    }

    #[test]
    fn exif_chunk_beats_xmp() {
        let tiff = crate::exif::tests::tiff(true, &[(0x0112, 3, 1, 3)], 0);
        let data = png(&[
            ihdr(1, 1, 8, 0),
            chunk(b"tEXt", b"XML:com.adobe.xmp\0<x tiff:Orientation=\"6\"/>"),
            chunk(b"eXIf", &tiff),
            chunk(b"IDAT", &[]),
            chunk(b"IEND", &[]),
        ]);
        let meta = filter_chunks(&data, &mut Vec::new()).unwrap();
        assert_eq!(meta.orientation(1 << 20).unwrap(), Some(3));
    }

    #[test]
    fn structural_errors() {
        let msg = |d: &[u8]| filter_chunks(d, &mut Vec::new()).unwrap_err().to_string();
        let no_iend = png(&[ihdr(1, 1, 8, 0), chunk(b"IDAT", &[])]);
        assert_eq!(
            msg(&no_iend),
            "truncated PNG: data ends before the IEND chunk"
        );
        let no_idat = png(&[ihdr(1, 1, 8, 0), chunk(b"IEND", &[])]);
        assert_eq!(msg(&no_idat), "corrupt PNG: no IDAT chunk");
        let critical = png(&[ihdr(1, 1, 8, 0), chunk(b"CgBI", &[0; 4])]);
        assert_eq!(
            msg(&critical),
            "unsupported PNG: unknown critical chunk CgBI"
        );
        let mut cut = png(&[ihdr(1, 1, 8, 0), chunk(b"IDAT", &[0; 40])]);
        cut.truncate(cut.len() - 10);
        assert_eq!(
            msg(&cut),
            "truncated PNG: IDAT chunk runs past the end of the data"
        );
    }

    #[test]
    fn compressed_metadata_is_capped() {
        // zlib stream of 2 MiB of 'a': inflating stops at the limit and the
        // row is an error naming it, not a 2 MiB allocation.
        let bomb = zlib_of_repeated(b'a', 2 << 20);
        let mut ztxt = b"Raw profile type exif\0\0".to_vec();
        ztxt.extend_from_slice(&bomb);
        let data = png(&[
            ihdr(1, 1, 8, 0),
            chunk(b"zTXt", &ztxt),
            chunk(b"IDAT", &[]),
            chunk(b"IEND", &[]),
        ]);
        let meta = filter_chunks(&data, &mut Vec::new()).unwrap();
        let err = meta.orientation(1 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "compressed EXIF metadata inflating past 1048576 bytes is over the 1048576 \
             byte metadata limit"
        );
        // Within a larger limit it inflates (and holds no orientation).
        assert_eq!(meta.orientation(4 << 20).unwrap(), None);
    }

    #[test]
    fn metadata_over_the_limit_is_an_error_only_when_needed() {
        let mut exif = crate::exif::tests::tiff(false, &[(0x0112, 3, 1, 6)], 0);
        exif.resize(5000, 0);
        let with_exif = png(&[
            ihdr(1, 1, 8, 0),
            chunk(b"eXIf", &exif),
            chunk(b"IDAT", &[]),
            chunk(b"IEND", &[]),
        ]);
        let meta = filter_chunks(&with_exif, &mut Vec::new()).unwrap();
        assert_eq!(meta.orientation(5000).unwrap(), Some(6));
        assert_eq!(
            meta.orientation(4999).unwrap_err().to_string(),
            "EXIF metadata of 5000 bytes is over the 4999 byte metadata limit"
        );
        // A large XMP is never read when EXIF already gives the orientation.
        let mut xmp = b"XML:com.adobe.xmp\0\0\0\0\0".to_vec();
        xmp.resize(100_000, b' ');
        let both = png(&[
            ihdr(1, 1, 8, 0),
            chunk(b"eXIf", &exif),
            chunk(b"iTXt", &xmp),
            chunk(b"IDAT", &[]),
            chunk(b"IEND", &[]),
        ]);
        let meta = filter_chunks(&both, &mut Vec::new()).unwrap();
        assert_eq!(meta.orientation(5000).unwrap(), Some(6));
    }

    /// A valid zlib stream of `n` copies of `byte` using stored blocks.
    fn zlib_of_repeated(byte: u8, n: usize) -> Vec<u8> {
        let mut v = vec![0x78, 0x01];
        let mut left = n;
        while left > 0 {
            let len = left.min(65535);
            left -= len;
            v.push(u8::from(left == 0));
            v.extend_from_slice(&(len as u16).to_le_bytes());
            v.extend_from_slice(&(!(len as u16)).to_le_bytes());
            v.extend(std::iter::repeat_n(byte, len));
        }
        // Adler-32 of the data.
        let (mut a, mut b) = (1u32, 0u32);
        for _ in 0..n {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        v.extend_from_slice(&((b << 16) | a).to_be_bytes());
        v
    }
}
