//! TIFF (and BigTIFF): the first page, from the `tiff` crate (image-rs):
//! striped or tiled; uncompressed, LZW, Deflate, PackBits, CCITT fax and
//! JPEG-in-TIFF (through zune-jpeg); 1/2/4/8/16-bit gray, 8/16-bit RGB and
//! RGBA, palette, CMYK, and YCbCr from JPEG.
//!
//! Limits: the crate reads only the first IFD when opened (tag values
//! capped at 1 MiB), which gives the size; the row's limits are checked
//! on it before anything is decoded, and the decode runs with the crate's
//! buffer limits set to this image's own output size, so a strip, a tile
//! or an LZW/Deflate stream cannot make it allocate more (a compression
//! bomb fails on its limit, or as truncated data).
//!
//! Pixels as Pillow's `convert('RGB')` / `('L')`: 16-bit samples keep
//! their high byte (as for PNG; Pillow clips 16-bit gray instead, see
//! `png.rs`); sub-byte gray is scaled to 0–255; a palette's 16-bit
//! ColorMap entries keep their high byte (Pillow's `b // 256`); CMYK is
//! converted with Pillow's `cmyk2rgb`; YCbCr with libjpeg's fixed-point
//! JFIF formulas; alpha is dropped. Orientation: the Orientation tag of
//! the first IFD, which Pillow's TIFF loader applies on load.

use std::borrow::Cow;
use std::io::Cursor;

use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;
use tiff::{ColorType, TiffError, TiffFormatError};

use crate::color;
use crate::error::RowError;

const FORMAT: &str = "TIFF";

/// Largest value of one IFD tag the decoder reads (strip tables, ColorMap).
const MAX_TAG_BYTES: usize = 1 << 20;

/// An opened first page: its size, known before decoding.
pub(crate) struct TiffPage<'a> {
    decoder: Decoder<Cursor<Cow<'a, [u8]>>>,
    /// Palette images: bits per index (the decoder reads them as gray).
    palette_bits: Option<u8>,
    /// The first IFD's Orientation tag (classic TIFF and BigTIFF alike).
    orientation: Option<u16>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl TiffPage<'_> {
    /// The raw Orientation tag of the first IFD, if present and readable.
    pub(crate) fn orientation(&self) -> Option<u16> {
        self.orientation
    }
}

fn error(e: TiffError) -> RowError {
    match e {
        TiffError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            RowError::truncated(FORMAT, "data ends early")
        }
        TiffError::FormatError(TiffFormatError::InconsistentSizesEncountered) => {
            RowError::corrupt(FORMAT, "strip or tile sizes disagree with the image")
        }
        TiffError::FormatError(f) => RowError::corrupt(FORMAT, f.to_string()),
        TiffError::UnsupportedError(u) => RowError::unsupported(FORMAT, u.to_string()),
        TiffError::LimitsExceeded => RowError::decode_failed(
            FORMAT,
            "a strip, tile or tag needs more memory than the image itself",
        ),
        other => RowError::corrupt(FORMAT, other.to_string()),
    }
}

/// Opens `data` (which starts with a TIFF or BigTIFF signature) and reads
/// its first IFD.
///
/// The `tiff` crate refuses palette (RGBPalette) images; their indices are
/// stored exactly like gray samples, so a palette page is opened from a
/// copy whose PhotometricInterpretation says BlackIsZero, and the indices
/// are mapped through the ColorMap here.
pub(crate) fn open(data: &[u8]) -> Result<TiffPage<'_>, RowError> {
    let mut decoder = Decoder::new(Cursor::new(Cow::Borrowed(data))).map_err(error)?;
    let (width, height) = decoder.dimensions().map_err(error)?;
    if width == 0 || height == 0 {
        return Err(RowError::corrupt(
            FORMAT,
            format!("image size {width}x{height} has a zero side"),
        ));
    }
    check_layout(&mut decoder, data, width, height)?;
    // A damaged Orientation entry is ignored, as Pillow ignores it.
    let orientation = decoder
        .find_tag_unsigned::<u16>(Tag::Orientation)
        .ok()
        .flatten();
    let mut palette_bits = None;
    if decoder
        .find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)
        .map_err(error)?
        == Some(PHOTOMETRIC_PALETTE)
    {
        let at = photometric_value_offset(data).ok_or_else(|| {
            RowError::corrupt(FORMAT, "PhotometricInterpretation is not an inline SHORT")
        })?;
        let mut copy = data.to_vec();
        let gray = if data[0] == b'M' {
            PHOTOMETRIC_BLACK_IS_ZERO.to_be_bytes()
        } else {
            PHOTOMETRIC_BLACK_IS_ZERO.to_le_bytes()
        };
        copy[at..at + 2].copy_from_slice(&gray);
        decoder = Decoder::new(Cursor::new(Cow::Owned(copy))).map_err(error)?;
        match decoder.colortype().map_err(error)? {
            ColorType::Gray(bits @ (1 | 2 | 4 | 8)) => palette_bits = Some(bits),
            other => {
                return Err(RowError::unsupported(
                    FORMAT,
                    format!("palette image with samples {other:?}"),
                ))
            }
        }
    } else {
        // Refuse what cannot be converted before anything is decoded.
        output_channels(decoder.colortype().map_err(error)?)?;
    }
    Ok(TiffPage {
        decoder,
        palette_bits,
        orientation,
        width,
        height,
    })
}

/// Most samples per pixel converted (CMYK + alpha).
const MAX_SAMPLES: u16 = 5;

/// Refuses, from the first IFD's tags and before anything is decoded, the
/// layouts whose decode would cost more than the page itself or give other
/// pixels than Pillow's:
/// - more than [`MAX_SAMPLES`] samples per pixel (the crate sizes buffers
///   by them), and tiles whose one tile is larger than the whole page's
///   budget (a 1×1 image with 2³²-wide tiles);
/// - JPEG strips or tiles whose own frame header is larger than the strip
///   or tile (the crate hands each to zune-jpeg, which would allocate and
///   decode the full frame size, up to 16384², once per strip);
/// - associated (premultiplied) alpha, which Pillow un-premultiplies;
/// - planar (separate-plane) samples, which the crate reads only the first
///   plane of.
fn check_layout(
    decoder: &mut Decoder<Cursor<Cow<'_, [u8]>>>,
    data: &[u8],
    width: u32,
    height: u32,
) -> Result<(), RowError> {
    let tag = |decoder: &mut Decoder<Cursor<Cow<'_, [u8]>>>, t: Tag| {
        decoder.find_tag_unsigned::<u64>(t).ok().flatten()
    };
    let samples = tag(decoder, Tag::SamplesPerPixel).unwrap_or(1);
    if samples > u64::from(MAX_SAMPLES) {
        return Err(RowError::unsupported(
            FORMAT,
            format!("{samples} samples per pixel"),
        ));
    }
    if samples > 1 && tag(decoder, Tag::PlanarConfiguration) == Some(2) {
        return Err(RowError::unsupported(
            FORMAT,
            "planar (separate-plane) samples",
        ));
    }
    let extra = decoder
        .find_tag_unsigned_vec::<u16>(Tag::ExtraSamples)
        .ok()
        .flatten()
        .unwrap_or_default();
    if extra.first() == Some(&1) {
        return Err(RowError::unsupported(
            FORMAT,
            "associated (premultiplied) alpha",
        ));
    }
    let page = u64::from(width) * u64::from(height);
    let tiled = tag(decoder, Tag::TileWidth).zip(tag(decoder, Tag::TileLength));
    if let Some((tw, th)) = tiled {
        // Tiles may overhang the page (a 256×256 tile for a 100×100 image is
        // normal), but one tile is never worth more than 4 pages or 4 Mpx.
        let cap = page.saturating_mul(4).max(1 << 22);
        if tw > 1 << 16 || th > 1 << 16 || tw * th > cap {
            return Err(RowError::corrupt(
                FORMAT,
                format!("{tw}x{th} tiles for a {width}x{height} image"),
            ));
        }
    }
    if tag(decoder, Tag::Compression) == Some(COMPRESSION_JPEG) {
        let (chunk_w, chunk_h, offsets, counts) = match tiled {
            Some((tw, th)) => (tw, th, Tag::TileOffsets, Tag::TileByteCounts),
            None => {
                let rows = tag(decoder, Tag::RowsPerStrip).unwrap_or(u64::from(height));
                (
                    u64::from(width),
                    rows.min(u64::from(height)),
                    Tag::StripOffsets,
                    Tag::StripByteCounts,
                )
            }
        };
        let offsets = decoder.get_tag_u64_vec(offsets).map_err(error)?;
        let counts = decoder.get_tag_u64_vec(counts).map_err(error)?;
        let round = |v: u64| v.div_ceil(16) * 16;
        for (&at, &len) in offsets.iter().zip(&counts) {
            let chunk = usize::try_from(at)
                .ok()
                .zip(usize::try_from(len).ok())
                .and_then(|(at, len)| data.get(at..at.checked_add(len)?))
                .ok_or_else(|| {
                    RowError::truncated(
                        FORMAT,
                        "a JPEG strip or tile runs past the end of the data",
                    )
                })?;
            let (w, h) = jpeg_frame_size(chunk).ok_or_else(|| {
                RowError::corrupt(FORMAT, "a JPEG strip or tile has no frame header")
            })?;
            if u64::from(w) > round(chunk_w) || u64::from(h) > round(chunk_h) {
                return Err(RowError::corrupt(
                    FORMAT,
                    format!("a JPEG strip or tile of {w}x{h} in {chunk_w}x{chunk_h} chunks"),
                ));
            }
        }
    }
    Ok(())
}

const COMPRESSION_JPEG: u64 = 7;

/// The frame size (width, height) in a JPEG stream's SOF marker, walking
/// marker segments from SOI; `None` if there is none before the first scan.
fn jpeg_frame_size(stream: &[u8]) -> Option<(u16, u16)> {
    if !stream.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut pos = 2;
    loop {
        // Fill bytes before a marker.
        while stream.get(pos) == Some(&0xFF) && stream.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if stream.get(pos) != Some(&0xFF) {
            return None;
        }
        let marker = *stream.get(pos + 1)?;
        pos += 2;
        if matches!(marker, 0x01 | 0xD0..=0xD7) {
            continue;
        }
        let len = usize::from(u16::from_be_bytes([
            *stream.get(pos)?,
            *stream.get(pos + 1)?,
        ]));
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let h = u16::from_be_bytes([*stream.get(pos + 3)?, *stream.get(pos + 4)?]);
                let w = u16::from_be_bytes([*stream.get(pos + 5)?, *stream.get(pos + 6)?]);
                return Some((w, h));
            }
            0xDA | 0xD9 => return None,
            _ => pos += len,
        }
    }
}

const PHOTOMETRIC_BLACK_IS_ZERO: u16 = 1;
const PHOTOMETRIC_PALETTE: u16 = 3;

/// Where the first IFD's PhotometricInterpretation value (an inline SHORT)
/// is in `data`, for classic TIFF and BigTIFF in either byte order.
fn photometric_value_offset(data: &[u8]) -> Option<usize> {
    let big_endian = data.first()? == &b'M';
    let read = |at: usize, n: usize| -> Option<u64> {
        let b = data.get(at..at.checked_add(n)?)?;
        Some(b.iter().enumerate().fold(0u64, |v, (i, &x)| {
            let shift = if big_endian { 8 * (n - 1 - i) } else { 8 * i };
            v | u64::from(x) << shift
        }))
    };
    let bigtiff = read(2, 2)? == 43;
    let (ifd, count_len, entry_len, value_at) = if bigtiff {
        (read(8, 8)?, 8, 20, 12)
    } else {
        (read(4, 4)?, 2, 12, 8)
    };
    let ifd = usize::try_from(ifd).ok()?;
    let count = usize::try_from(read(ifd, count_len)?).ok()?;
    let first = ifd.checked_add(count_len)?;
    // The crate already read this IFD; bound the walk all the same.
    for i in 0..count.min(4096) {
        let entry = first.checked_add(i * entry_len)?;
        if read(entry, 2)? == 262 {
            // Type SHORT (3), count 1: the value sits in the entry.
            return (read(entry + 2, 2)? == 3 && read(entry + 4, 4)? == 1)
                .then_some(entry + value_at);
        }
    }
    None
}

/// 1 (gray) or 3 (colour) for colour types the engine converts.
fn output_channels(color: ColorType) -> Result<usize, RowError> {
    match color {
        ColorType::Gray(1 | 2 | 4 | 8 | 16) => Ok(1),
        ColorType::Multiband {
            bit_depth: 8 | 16,
            num_samples: 2,
        } => Ok(1),
        ColorType::RGB(8 | 16) | ColorType::RGBA(8 | 16) => Ok(3),
        ColorType::Palette(1 | 2 | 4 | 8) => Ok(3),
        ColorType::CMYK(8) | ColorType::CMYKA(8) => Ok(3),
        ColorType::YCbCr(8) => Ok(3),
        other => Err(RowError::unsupported(
            FORMAT,
            format!("colour type {other:?}"),
        )),
    }
}

/// Decodes the page into `dst` as 8-bit gray or RGB. Returns the channel
/// count (1 or 3).
pub(crate) fn decode(page: TiffPage<'_>, dst: &mut Vec<u8>) -> Result<usize, RowError> {
    let TiffPage {
        decoder,
        palette_bits,
        width,
        height,
        ..
    } = page;
    let (w, h) = (width as usize, height as usize);
    let pixels = w * h;
    // 5 samples of 2 bytes is the largest pixel converted (CMYKA is 8-bit).
    let budget = pixels.saturating_mul(8).max(1 << 16);
    let mut decoder = decoder.with_limits(limits(budget));
    let color = match palette_bits {
        Some(bits) => ColorType::Palette(bits),
        None => decoder.colortype().map_err(error)?,
    };
    let channels = output_channels(color)?;
    let palette = match palette_bits {
        Some(bits) => Some(color_map(&mut decoder, bits)?),
        None => None,
    };
    let samples = decoder.read_image().map_err(error)?;
    let out = {
        let len = pixels * channels;
        if dst.len() < len {
            dst.resize(len, 0);
        }
        &mut dst[..len]
    };
    match (color, samples) {
        (ColorType::Gray(bits @ (1 | 2 | 4)), DecodingResult::U8(v)) => {
            unpack_gray(&v, w, h, bits, out)?
        }
        (ColorType::Palette(bits), DecodingResult::U8(v)) => {
            let lut = palette.expect("palette read above");
            let mut idx = vec![0u8; pixels];
            unpack(&v, w, h, bits, &mut idx)?;
            for (px, &i) in out.chunks_exact_mut(3).zip(&idx) {
                px.copy_from_slice(&lut[usize::from(i)]);
            }
        }
        (color, DecodingResult::U8(v)) => convert(color, &v, out)?,
        (color, DecodingResult::U16(v)) => {
            // High byte of each sample, then as 8-bit.
            let high: Vec<u8> = v.iter().map(|s| (s >> 8) as u8).collect();
            convert(color, &high, out)?
        }
        (color, _) => {
            return Err(RowError::unsupported(
                FORMAT,
                format!("sample format of colour type {color:?} (floating point or signed)"),
            ))
        }
    }
    Ok(channels)
}

fn limits(budget: usize) -> Limits {
    let mut limits = Limits::default();
    limits.decoding_buffer_size = budget;
    limits.intermediate_buffer_size = budget;
    limits.ifd_value_size = MAX_TAG_BYTES;
    limits
}

/// The ColorMap as 8-bit RGB entries (high bytes), black past its end.
fn color_map(
    decoder: &mut Decoder<Cursor<Cow<'_, [u8]>>>,
    bits: u8,
) -> Result<Box<[[u8; 3]; 256]>, RowError> {
    let map = decoder
        .get_tag_u16_vec(Tag::ColorMap)
        .map_err(|_| RowError::corrupt(FORMAT, "palette image without a readable ColorMap"))?;
    let n = 1usize << bits;
    if map.len() != 3 * n {
        return Err(RowError::corrupt(
            FORMAT,
            format!(
                "ColorMap has {} entries, {} expected for {bits}-bit indices",
                map.len(),
                3 * n
            ),
        ));
    }
    let mut lut = Box::new([[0u8; 3]; 256]);
    for (i, entry) in lut.iter_mut().take(n).enumerate() {
        *entry = [
            (map[i] >> 8) as u8,
            (map[n + i] >> 8) as u8,
            (map[2 * n + i] >> 8) as u8,
        ];
    }
    Ok(lut)
}

/// Unpacks `bits`-per-sample rows (each starting on a byte) to one byte
/// per sample, as stored values.
fn unpack(v: &[u8], w: usize, h: usize, bits: u8, out: &mut [u8]) -> Result<(), RowError> {
    if bits == 8 {
        out.copy_from_slice(
            v.get(..w * h)
                .ok_or_else(|| RowError::corrupt(FORMAT, "fewer samples than pixels"))?,
        );
        return Ok(());
    }
    let bits = usize::from(bits);
    let stride = (w * bits).div_ceil(8);
    if v.len() < stride * h {
        return Err(RowError::corrupt(FORMAT, "fewer samples than pixels"));
    }
    let mask = (1u16 << bits) - 1;
    for (row, line) in out.chunks_exact_mut(w).zip(v.chunks_exact(stride)) {
        for (x, px) in row.iter_mut().enumerate() {
            let bit = x * bits;
            let byte = line[bit / 8];
            let shift = 8 - bits - bit % 8;
            *px = (u16::from(byte) >> shift & mask) as u8;
        }
    }
    Ok(())
}

/// Sub-byte gray scaled to 0–255 (Pillow's `1`, `L;2`, `L;4` unpackers).
fn unpack_gray(v: &[u8], w: usize, h: usize, bits: u8, out: &mut [u8]) -> Result<(), RowError> {
    unpack(v, w, h, bits, out)?;
    let scale = 255 / ((1u16 << bits) - 1) as u8;
    for px in out.iter_mut() {
        *px *= scale;
    }
    Ok(())
}

/// 8-bit samples of `color` (interleaved) to gray or RGB in `out`.
fn convert(color: ColorType, v: &[u8], out: &mut [u8]) -> Result<(), RowError> {
    let stride = match color {
        ColorType::Gray(_) => 1,
        ColorType::Multiband { num_samples, .. } => usize::from(num_samples),
        ColorType::RGB(_) | ColorType::YCbCr(_) => 3,
        ColorType::RGBA(_) | ColorType::CMYK(_) => 4,
        ColorType::CMYKA(_) => 5,
        other => {
            return Err(RowError::unsupported(
                FORMAT,
                format!("colour type {other:?}"),
            ))
        }
    };
    let channels = if stride <= 2 { 1 } else { 3 };
    let pixels = out.len() / channels;
    if v.len() < pixels * stride {
        return Err(RowError::corrupt(FORMAT, "fewer samples than pixels"));
    }
    match color {
        ColorType::CMYK(_) | ColorType::CMYKA(_) => {
            // Pillow's cmyk2rgb on stored (not inverted) CMYK equals the
            // Adobe-inverted conversion on inverted bytes.
            let mut cmyk: Vec<u8> = v
                .chunks_exact(stride)
                .take(pixels)
                .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3]])
                .collect();
            color::cmyk_to_rgb(&mut cmyk, pixels);
            out.copy_from_slice(&cmyk[..pixels * 3]);
        }
        ColorType::YCbCr(_) => {
            for (o, p) in out.chunks_exact_mut(3).zip(v.chunks_exact(3)) {
                o.copy_from_slice(&ycc_to_rgb(p[0], p[1], p[2]));
            }
        }
        _ => {
            for (o, p) in out.chunks_exact_mut(channels).zip(v.chunks_exact(stride)) {
                o.copy_from_slice(&p[..channels]);
            }
        }
    }
    Ok(())
}

/// libjpeg's `ycc_rgb_convert` (jdcolor.c): JFIF YCbCr to RGB with 16-bit
/// fixed-point constants, rounded, clamped.
fn ycc_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    const SCALE: i32 = 16;
    const HALF: i32 = 1 << (SCALE - 1);
    let fix = |x: f64| (x * f64::from(1 << SCALE) + 0.5) as i32;
    let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
    let r = y + ((fix(1.402) * cr + HALF) >> SCALE);
    let b = y + ((fix(1.772) * cb + HALF) >> SCALE);
    let g = y + ((-fix(0.344_136_286) * cb - fix(0.714_136_286) * cr + HALF) >> SCALE);
    let clamp = |v: i32| v.clamp(0, 255) as u8;
    [clamp(r), clamp(g), clamp(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_byte_rows_start_on_a_byte() {
        // 3 pixels of 2 bits per row, 2 rows: 0b00_01_10_00, 0b11_00_01_00.
        let v = [0b0001_1000, 0b1100_0100];
        let mut out = [0u8; 6];
        unpack_gray(&v, 3, 2, 2, &mut out).unwrap();
        assert_eq!(out, [0, 85, 170, 255, 0, 85]);
    }

    #[test]
    fn ycc_matches_libjpeg() {
        // jdcolor.c's table arithmetic, worked by hand (including the clamps).
        assert_eq!(ycc_to_rgb(128, 128, 128), [128, 128, 128]);
        assert_eq!(ycc_to_rgb(76, 85, 255), [254, 0, 0]);
        assert_eq!(ycc_to_rgb(0, 0, 0), [0, 135, 0]);
    }

    #[test]
    fn refuses_float_samples_by_name() {
        assert!(output_channels(ColorType::Gray(32))
            .unwrap_err()
            .to_string()
            .starts_with("unsupported TIFF: colour type Gray(32)"));
        assert!(output_channels(ColorType::Lab(8)).is_err());
    }
}
