//! JPEG: a strict header walk of our own, then pixels from libjpeg-turbo
//! ([`turbo`], the default) or zune-jpeg ([`zune`], the pure-Rust
//! fallback), as the spec's resolved `decoder` says.
//!
//! The walk (markers from SOI up to the first SOS) does four things before
//! any decoder sees a byte:
//!
//! 1. Finds the frame size so the pixel and aspect limits are checked with
//!    no pixel buffer allocated (a 65500×65500 SOF costs a few comparisons).
//! 2. Names what neither decoder path supports -- lossless (SOF3, SOF11),
//!    hierarchical (SOF5–7, 13–15), 12/16-bit precision, DNL -- instead of
//!    passing on an opaque error. Arithmetic coding (SOF9/10) is decoded by
//!    libjpeg-turbo and refused by name for zune-jpeg.
//! 3. Picks out the first `Exif\0\0` APP1 and the first XMP APP1 for the
//!    orientation (Pillow also keeps the first EXIF segment).
//! 4. Rebuilds a clean stream into a reused buffer: SOI, DQT, DHT, DAC, SOF,
//!    DRI, a well-formed Adobe APP14, then SOS and the scan data up to the
//!    first EOI. Everything else before the first scan is dropped, so no
//!    decoder copies EXIF/ICC/XMP blobs (no per-image allocation, no
//!    3000-APP15 slowness), and libjpeg's tolerances are reproduced where
//!    they are harmless: junk or `FF 00` between header markers is skipped
//!    (libjpeg warns "extraneous bytes"), a short APP14 is ignored (libjpeg
//!    ignores APP14 under 12 bytes), and a file without DHT (Motion-JPEG
//!    style) gets the standard Annex K tables libjpeg would use. Data after
//!    the first EOI (MPO second frames, appended ZIPs) is never looked at.
//!
//! [`finish_stream`] then walks the scan data: restart markers must come in
//! sequence (RST0..RST7 cycling, reset at every SOS) and the image must end
//! with EOI; it also counts the scans and notes quantisation tables defined
//! between them, which is what [`zune`] needs to refuse the layouts
//! zune-jpeg decodes wrongly.
//!
//! Strictness: with the spec's `strict: true` a truncated scan, corrupt
//! entropy data, restart markers out of sequence or a missing EOI is a row
//! error; with `strict: false` (the default) the row is decoded as far as
//! possible (missing data padded) and the problem becomes the row's
//! warning, so the caller can always tell. Known gap: a bit flip in
//! entropy-coded data that still decodes to valid Huffman codes yields wrong
//! pixels without an error, as it does in libjpeg/Pillow.

pub(crate) mod turbo;
pub(crate) mod zune;

use pixelfeed_schema::JpegDecoder;

use crate::error::RowError;
use crate::exif::EXIF_PREFIX;
use crate::geometry::Rect;
/// APP1 prefix of an XMP packet.
const XMP_PREFIX: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

/// A DHT segment with the four standard tables of ITU T.81 Annex K.3
/// (luminance/chrominance DC and AC), byte for byte as libjpeg writes them.
/// Inserted when a file defines no Huffman tables before its first scan.
const STANDARD_DHT: [u8; 420] = [
    0xFF, 0xC4, 0x01, 0xA2, 0x00, 0x00, 0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A,
    0x0B, 0x10, 0x00, 0x02, 0x01, 0x03, 0x03, 0x02, 0x04, 0x03, 0x05, 0x05, 0x04, 0x04, 0x00, 0x00,
    0x01, 0x7D, 0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51,
    0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52,
    0xD1, 0xF0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26,
    0x27, 0x28, 0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47,
    0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67,
    0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5,
    0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3,
    0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA,
    0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6,
    0xF7, 0xF8, 0xF9, 0xFA, 0x01, 0x00, 0x03, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A,
    0x0B, 0x11, 0x00, 0x02, 0x01, 0x02, 0x04, 0x04, 0x03, 0x04, 0x07, 0x05, 0x04, 0x04, 0x00, 0x01,
    0x02, 0x77, 0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07,
    0x61, 0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33,
    0x52, 0xF0, 0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19,
    0x1A, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46,
    0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66,
    0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85,
    0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3,
    0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA,
    0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8,
    0xD9, 0xDA, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6,
    0xF7, 0xF8, 0xF9, 0xFA,
];

/// What the header walk learned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JpegHeader<'a> {
    /// Frame width in pixels (from SOF).
    pub width: u32,
    /// Frame height in pixels (from SOF).
    pub height: u32,
    /// Number of colour components (1, 3 or 4).
    pub components: u8,
    /// The frame's components, `components` of them.
    pub frame: Frame,
    /// Progressive (SOF2, SOF10) rather than sequential.
    pub progressive: bool,
    /// Arithmetic (SOF9, SOF10) rather than Huffman coding.
    pub arithmetic: bool,
    /// Quantisation tables (bit per table id 0..3) defined before the first
    /// scan.
    pub tables_before_scan: u8,
    /// TIFF data of the first `Exif\0\0` APP1 segment.
    pub exif: Option<&'a [u8]>,
    /// Payload of the first XMP APP1 segment.
    pub xmp: Option<&'a [u8]>,
    /// Offset of the first SOS marker in the input.
    sos_offset: usize,
    /// Whether any DHT segment came before the first SOS.
    has_dht: bool,
}

/// The marker name for messages.
fn marker_name(m: u8) -> String {
    match m {
        0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => format!("SOF{}", m - 0xC0),
        0xC4 => "DHT".into(),
        0xCC => "DAC".into(),
        0xDA => "SOS".into(),
        0xDB => "DQT".into(),
        0xDC => "DNL".into(),
        0xDD => "DRI".into(),
        0xE0..=0xEF => format!("APP{}", m - 0xE0),
        0xFE => "COM".into(),
        _ => format!("0xFF{m:02X}"),
    }
}

fn corrupt(msg: impl Into<String>) -> RowError {
    RowError::CorruptJpeg(msg.into())
}

fn truncated(msg: impl Into<String>) -> RowError {
    RowError::TruncatedJpeg(msg.into())
}

fn unsupported(msg: impl Into<String>) -> RowError {
    RowError::UnsupportedJpeg(msg.into())
}

/// Walks the markers of `data` (which starts with `FF D8 FF`) up to the
/// first SOS, validating the frame header, and writes the kept header
/// segments to `out` (cleared first). The scan data is appended later by
/// [`finish_stream`], once the caller has checked the size limits.
pub(crate) fn parse_header<'a>(
    data: &'a [u8],
    out: &mut Vec<u8>,
) -> Result<JpegHeader<'a>, RowError> {
    out.clear();
    out.extend_from_slice(&[0xFF, 0xD8]);
    let mut pos = 2;
    let mut frame: Option<Frame> = None;
    let mut exif = None;
    let mut xmp = None;
    let mut has_dht = false;
    let mut sof_marker = 0u8;
    let mut tables = 0u8;
    loop {
        // libjpeg's next_marker(): skip anything up to an FF, then fill FFs;
        // `FF 00` is not a marker and counts as junk too.
        let marker = loop {
            let ff = data
                .get(pos..)
                .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
                .ok_or_else(|| truncated("data ends before the first scan (SOS)"))?;
            pos += ff;
            while data.get(pos + 1) == Some(&0xFF) {
                pos += 1;
            }
            let m = *data
                .get(pos + 1)
                .ok_or_else(|| truncated("data ends before the first scan (SOS)"))?;
            pos += 2;
            if m != 0x00 {
                break m;
            }
        };
        match marker {
            0xD8 => return Err(corrupt("two SOI markers")),
            0xD9 => return Err(corrupt("no image data (EOI before the first scan)")),
            // Standalone markers carry no length; libjpeg ignores them here.
            0x01 | 0xD0..=0xD7 => continue,
            // Reserved codes are not segments whose length could be trusted.
            0x02..=0xBF => {
                return Err(corrupt(format!(
                    "unknown marker {} in the header",
                    marker_name(marker)
                )))
            }
            _ => {}
        }
        let len_bytes = data
            .get(pos..pos + 2)
            .ok_or_else(|| truncated(format!("{} marker has no length", marker_name(marker))))?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        if len < 2 {
            return Err(corrupt(format!(
                "{} segment has invalid length {len}",
                marker_name(marker)
            )));
        }
        let seg_end = pos + len;
        let segment = data.get(pos - 2..seg_end).ok_or_else(|| {
            truncated(format!(
                "{} segment runs past the end of the data",
                marker_name(marker)
            ))
        })?;
        let payload = &segment[4..];
        match marker {
            // Baseline, extended and progressive, Huffman (SOF0-2) or
            // arithmetic (SOF9, SOF10) coded.
            0xC0..=0xC2 | 0xC9 | 0xCA => {
                if frame.is_some() {
                    return Err(corrupt("two SOF markers"));
                }
                frame = Some(parse_sof(payload)?);
                sof_marker = marker;
                out.extend_from_slice(segment);
            }
            0xC3 | 0xCB => return Err(unsupported("lossless")),
            0xC5..=0xC7 | 0xCD..=0xCF => return Err(unsupported("hierarchical")),
            0xDC => return Err(unsupported("DNL marker (height defined after the scan)")),
            0xC4 => {
                has_dht = true;
                out.extend_from_slice(segment);
            }
            0xDB => {
                tables |= quantisation_table_ids(payload)?;
                out.extend_from_slice(segment);
            }
            // DRI, DAC (arithmetic conditioning).
            0xDD | 0xCC => out.extend_from_slice(segment),
            0xE1 => {
                if exif.is_none() && payload.starts_with(EXIF_PREFIX) {
                    exif = Some(&payload[EXIF_PREFIX.len()..]);
                } else if xmp.is_none() && payload.starts_with(XMP_PREFIX) {
                    xmp = Some(&payload[XMP_PREFIX.len()..]);
                }
            }
            // Adobe APP14 decides CMYK vs YCCK (and RGB for 3 components);
            // like libjpeg, only a complete one (12+ bytes) counts.
            0xEE if payload.len() >= 12 && payload.starts_with(b"Adobe") => {
                out.extend_from_slice(segment);
            }
            0xDA => {
                let frame =
                    frame.ok_or_else(|| corrupt("scan (SOS) before the frame header (SOF)"))?;
                check_sos(payload, &frame)?;
                return Ok(JpegHeader {
                    width: frame.width,
                    height: frame.height,
                    components: frame.components,
                    frame,
                    progressive: matches!(sof_marker, 0xC2 | 0xCA),
                    arithmetic: matches!(sof_marker, 0xC9 | 0xCA),
                    tables_before_scan: tables,
                    exif,
                    xmp,
                    sos_offset: pos - 2,
                    has_dht,
                });
            }
            // Other APPn, COM, JPG and JPGn segments: skipped by length.
            _ => {}
        }
        pos = seg_end;
    }
}

/// The frame header fields the walk needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    width: u32,
    height: u32,
    components: u8,
    /// Component identifiers, `components` of them.
    pub ids: [u8; 4],
    /// Horizontal and vertical sampling factors (1..=4) and quantisation
    /// table (0..=3) of each component.
    pub sampling: [(u8, u8); 4],
    /// The quantisation table of each component.
    pub tables: [u8; 4],
}

impl Frame {
    /// `(h, v, table)` of each component, in frame order.
    pub(crate) fn components(&self) -> impl Iterator<Item = (u8, u8, u8)> + '_ {
        (0..usize::from(self.components))
            .map(|i| (self.sampling[i].0, self.sampling[i].1, self.tables[i]))
    }
}

/// The table ids (bit per id) a DQT payload defines; a malformed one is
/// corrupt (libjpeg would refuse it too).
fn quantisation_table_ids(mut p: &[u8]) -> Result<u8, RowError> {
    let mut ids = 0u8;
    while let Some((&pq_tq, rest)) = p.split_first() {
        let (precision, id) = (pq_tq >> 4, pq_tq & 0x0F);
        if id > 3 || precision > 1 {
            return Err(corrupt(format!(
                "DQT defines table {id} with precision {precision}"
            )));
        }
        let len = if precision == 0 { 64 } else { 128 };
        p = rest
            .get(len..)
            .ok_or_else(|| corrupt("DQT segment shorter than its tables"))?;
        ids |= 1 << id;
    }
    Ok(ids)
}

/// Validates an SOF0/1/2 payload.
fn parse_sof(p: &[u8]) -> Result<Frame, RowError> {
    let [precision, h0, h1, w0, w1, n, ..] = *p else {
        return Err(corrupt("SOF segment too short"));
    };
    let components = usize::from(n);
    if p.len() != 6 + 3 * components {
        return Err(corrupt(format!(
            "SOF length {} does not match its {components} components",
            p.len() + 2
        )));
    }
    match precision {
        8 => {}
        12 | 16 => return Err(unsupported(format!("{precision}-bit precision"))),
        other => return Err(corrupt(format!("invalid sample precision {other}"))),
    }
    let height = u32::from(u16::from_be_bytes([h0, h1]));
    let width = u32::from(u16::from_be_bytes([w0, w1]));
    if height == 0 {
        return Err(corrupt("frame height is 0"));
    }
    if width == 0 {
        return Err(corrupt("frame width is 0"));
    }
    if !matches!(n, 1 | 3 | 4) {
        return Err(unsupported(format!("{n} colour components")));
    }
    let mut ids = [0u8; 4];
    let mut sampling = [(0u8, 0u8); 4];
    let mut tables = [0u8; 4];
    for (i, c) in p[6..].chunks_exact(3).enumerate() {
        ids[i] = c[0];
        sampling[i] = (c[1] >> 4, c[1] & 0x0F);
        tables[i] = c[2];
        if ids[..i].contains(&c[0]) {
            return Err(corrupt(format!("component id {} appears twice", c[0])));
        }
        let (h, v) = (c[1] >> 4, c[1] & 0x0F);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return Err(corrupt(format!(
                "component {} has sampling factors {h}x{v} (allowed 1 to 4)",
                c[0]
            )));
        }
        if c[2] > 3 {
            return Err(corrupt(format!(
                "component {} uses quantisation table {} (allowed 0 to 3)",
                c[0], c[2]
            )));
        }
    }
    Ok(Frame {
        width,
        height,
        components: n,
        ids,
        sampling,
        tables,
    })
}

/// Checks the first scan header against the frame: every component it
/// names must exist (zune would report this as an SOF error).
fn check_sos(p: &[u8], frame: &Frame) -> Result<(), RowError> {
    let n = usize::from(*p.first().ok_or_else(|| corrupt("SOS segment too short"))?);
    if n == 0 || n > 4 || p.len() != 4 + 2 * n {
        return Err(corrupt(format!(
            "SOS length {} does not match its {n} components",
            p.len() + 2
        )));
    }
    let known = &frame.ids[..usize::from(frame.components)];
    for c in p[1..1 + 2 * n].chunks_exact(2) {
        if !known.contains(&c[0]) {
            return Err(corrupt(format!(
                "scan uses component {}, which the frame (SOF) does not define",
                c[0]
            )));
        }
    }
    Ok(())
}

/// What the scan walk of [`finish_stream`] found besides the warning.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ScanFacts {
    /// What a lenient (`strict == false`) caller gets for what strict mode
    /// would refuse (restart markers out of sequence, no EOI).
    pub warning: Option<String>,
    /// Scans (SOS markers) in the image.
    pub scans: u32,
    /// Quantisation tables (bit per id) defined after the first scan began.
    pub tables_after_scan: u8,
    /// Whether the scans leave some coded component's coefficient short of
    /// full precision (a progressive file whose successive-approximation
    /// refinement stops early, or that never codes some AC band): libjpeg
    /// then estimates the missing bits ("block smoothing"), other decoders
    /// do not.
    pub unrefined: bool,
}

/// Appends the scan data (first SOS up to and including the first EOI, or
/// to the end when there is no EOI) to `out`, inserting the standard
/// Huffman tables first when a Huffman-coded header had none, and checks the
/// restart marker sequence and the EOI on the way.
pub(crate) fn finish_stream(
    data: &[u8],
    header: &JpegHeader<'_>,
    out: &mut Vec<u8>,
    strict: bool,
) -> Result<ScanFacts, RowError> {
    let scan = check_scan_markers(data, header.sos_offset, &header.frame);
    if !header.has_dht && !header.arithmetic {
        out.extend_from_slice(&STANDARD_DHT);
    }
    out.extend_from_slice(&data[header.sos_offset..scan.end]);
    let all = (1u8 << header.components) - 1;
    let problem = match scan.problem {
        Some(problem) => Some(problem),
        None if !scan.eoi => Some(truncated("no EOI marker at the end of the image")),
        // libjpeg decodes a component no scan codes as flat gray without a
        // word; the file is broken all the same.
        None if scan.coded & all != all => {
            let missing = (0..header.components)
                .find(|i| scan.coded & (1 << i) == 0)
                .map_or(0, |i| header.frame.ids[usize::from(i)]);
            Some(corrupt(format!(
                "component {missing} is never coded in any scan"
            )))
        }
        None => None,
    };
    let warning = match problem {
        Some(problem) if strict => return Err(problem),
        Some(problem) => Some(problem.to_string()),
        None => None,
    };
    // Sequential decoders ignore Ss/Se/Al, so only progressive scans count.
    let unrefined = header.progressive
        && (0..header.components)
            .any(|i| scan.coded & (1 << i) != 0 && scan.refined[usize::from(i)] != u64::MAX);
    Ok(ScanFacts {
        warning,
        scans: scan.scans,
        tables_after_scan: scan.tables,
        unrefined,
    })
}

/// What [`check_scan_markers`] found.
struct ScanEnd {
    /// End of the first image: just past its EOI, or the data length.
    end: usize,
    /// Whether the image ended with EOI.
    eoi: bool,
    /// The first restart marker out of sequence, if any.
    problem: Option<RowError>,
    /// SOS markers seen.
    scans: u32,
    /// Quantisation table ids (bit per id) defined between scans.
    tables: u8,
    /// The frame components (bit per index) some scan codes.
    coded: u8,
    /// Per frame component, the coefficients (bit per zigzag index) some
    /// scan codes to full precision (successive approximation low bit 0).
    refined: [u64; 4],
}

/// Walks the entropy-coded data from the SOS at `sos`: restart markers must
/// cycle RST0..RST7 within each scan. Counts scans, notes tables defined
/// between them and which of `frame`'s components the scans code.
fn check_scan_markers(data: &[u8], sos: usize, frame: &Frame) -> ScanEnd {
    let mut expected = 0u8;
    let mut problem = None;
    let (mut scans, mut tables, mut coded) = (0u32, 0u8, 0u8);
    let mut refined = [0u64; 4];
    let mut pos = sos;
    let to_the_end = |problem, scans, tables, coded, refined| ScanEnd {
        end: data.len(),
        eoi: false,
        problem,
        scans,
        tables,
        coded,
        refined,
    };
    loop {
        // memchr: SIMD search; this walk reads every byte of the scan data
        // (2–3 % of a row's time with a byte-by-byte search).
        let Some(ff) = data.get(pos..).and_then(|rest| memchr::memchr(0xFF, rest)) else {
            return to_the_end(problem, scans, tables, coded, refined);
        };
        pos += ff;
        let Some(&m) = data.get(pos + 1) else {
            return to_the_end(problem, scans, tables, coded, refined);
        };
        match m {
            // Stuffed zero or a fill byte: not a marker.
            0x00 => pos += 2,
            0xFF => pos += 1,
            0xD0..=0xD7 => {
                let n = m - 0xD0;
                if n != expected && problem.is_none() {
                    problem = Some(corrupt(format!(
                        "restart marker RST{n} out of sequence (expected RST{expected})"
                    )));
                }
                expected = (n + 1) % 8;
                pos += 2;
            }
            0xD9 => {
                return ScanEnd {
                    end: pos + 2,
                    eoi: true,
                    problem,
                    scans,
                    tables,
                    coded,
                    refined,
                }
            }
            _ => {
                // A segment between scans (SOS, DHT, DQT, DRI, APPn, COM):
                // skip it by its length. A bad length is left for the
                // decoder to report; the check simply stops here.
                let Some(len) = data.get(pos + 2..pos + 4) else {
                    return to_the_end(problem, scans, tables, coded, refined);
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let payload = data.get(pos + 4..pos + 2 + len).unwrap_or_default();
                match m {
                    0xDA => {
                        expected = 0;
                        scans += 1;
                        let n = usize::from(payload.first().copied().unwrap_or(0));
                        // Ss, Se, Ah/Al follow the component list.
                        let band = payload
                            .get(1 + 2 * n..4 + 2 * n)
                            .filter(|b| b[2] & 0x0F == 0 && b[0] <= b[1] && b[1] < 64)
                            .map_or(0, |b| (u64::MAX >> (63 - b[1] + b[0])) << b[0]);
                        for id in payload.iter().skip(1).step_by(2).take(n) {
                            let known = &frame.ids[..usize::from(frame.components)];
                            if let Some(i) = known.iter().position(|k| k == id) {
                                coded |= 1 << i;
                                refined[i] |= band;
                            }
                        }
                    }
                    0xDB => tables |= quantisation_table_ids(payload).unwrap_or(0),
                    _ => {}
                }
                pos += 2 + len;
                if pos > data.len() {
                    return to_the_end(problem, scans, tables, coded, refined);
                }
            }
        }
    }
}

/// What the row asks of a decoder.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "turbojpeg"), allow(dead_code))]
pub(crate) struct Request {
    /// Which decoder (resolved: never [`JpegDecoder::Auto`]).
    pub decoder: JpegDecoder,
    /// Decode at 1/`scale`: 1, or 2, 4, 8 (only libjpeg-turbo scales).
    pub scale: u32,
    /// The part of the (scaled) stored image the caller needs; a decoder
    /// may return more (see [`Decoded::region`]).
    pub region: Rect,
    /// Stop at the first recoverable problem (an error) rather than pad.
    pub strict: bool,
    /// RGBX output welcome (libjpeg-turbo, YCbCr/RGB frames).
    pub rgbx: bool,
    /// Longest side a decoder may see (from the limits).
    pub max_side: usize,
}

/// The size of a `width` × `height` image decoded at 1/`scale`: libjpeg's
/// rounding up (`TJSCALED`, as Pillow's `draft` reports it).
pub(crate) fn scaled_size(width: u32, height: u32, scale: u32) -> (u32, u32) {
    (width.div_ceil(scale), height.div_ceil(scale))
}

/// What a decoder made of the stream.
#[derive(Debug)]
pub(crate) struct Decoded {
    /// The rectangle of the (scaled) stored image `dst` holds: the request's
    /// region widened to the decoder's alignment, or the whole image.
    pub region: Rect,
    /// 1 (gray), 3 (RGB) or 4 (RGBX, the fourth byte unused) interleaved
    /// channels.
    pub channels: usize,
    /// The decoder's own warning, when the image decoded only with recovery.
    pub warning: Option<String>,
}

/// Decodes the cleaned `stream` of the frame `header` describes into `dst`
/// as `request` says: 1 byte per pixel for single-component files, else RGB
/// (CMYK and YCCK converted as Pillow's `convert('RGB')` does), or RGBX
/// when asked of libjpeg-turbo (see [`Decoded::channels`]).
pub(crate) fn decode(
    stream: &[u8],
    header: &JpegHeader<'_>,
    facts: &ScanFacts,
    request: Request,
    dst: &mut Vec<u8>,
) -> Result<Decoded, RowError> {
    match request.decoder {
        JpegDecoder::LibjpegTurbo => turbo::decode(stream, header, &request, dst),
        JpegDecoder::ZuneJpeg => {
            if request.scale != 1 {
                return Err(RowError::Internal("zune-jpeg cannot decode a draft".into()));
            }
            zune::check_layout(header, facts)?;
            let (channels, warning) =
                zune::decode(stream, header, request.max_side, dst, request.strict)?;
            Ok(Decoded {
                region: Rect {
                    top: 0,
                    left: 0,
                    height: header.height,
                    width: header.width,
                },
                channels,
                warning,
            })
        }
        JpegDecoder::Auto => Err(RowError::Internal(
            "the JPEG decoder was not resolved before decoding".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SOI, an SOF0 for `w`×`h` with 3 components 2x2/1x1/1x1, a DHT stub
    /// and SOS, then `tail`.
    fn minimal(w: u16, h: u16, extra: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8];
        v.extend_from_slice(extra);
        v.extend_from_slice(&[0xFF, 0xC0, 0, 17, 8]);
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        v.extend_from_slice(&[0xFF, 0xC4, 0, 2]);
        v.extend_from_slice(&[0xFF, 0xDA, 0, 12, 3, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0]);
        v.extend_from_slice(tail);
        v
    }

    fn header_of(data: &[u8]) -> Result<JpegHeader<'_>, RowError> {
        parse_header(data, &mut Vec::new())
    }

    #[test]
    fn standard_dht_is_well_formed() {
        assert_eq!(&STANDARD_DHT[..2], &[0xFF, 0xC4]);
        assert_eq!(
            usize::from(u16::from_be_bytes([STANDARD_DHT[2], STANDARD_DHT[3]])),
            STANDARD_DHT.len() - 2
        );
        let mut p = &STANDARD_DHT[4..];
        let mut classes = Vec::new();
        while !p.is_empty() {
            let n: usize = p[1..17].iter().map(|&c| usize::from(c)).sum();
            classes.push(p[0]);
            p = &p[17 + n..];
        }
        assert_eq!(classes, [0x00, 0x10, 0x01, 0x11]);
    }

    #[test]
    fn reads_the_frame_and_metadata() {
        let mut app1 = vec![0xFF, 0xE1, 0, 12];
        app1.extend_from_slice(b"Exif\0\0II*\0");
        let data = minimal(640, 427, &app1, &[0x12, 0xFF, 0xD9]);
        let h = header_of(&data).unwrap();
        assert_eq!((h.width, h.height, h.components), (640, 427, 3));
        assert_eq!(h.exif, Some(&b"II*\0"[..]));
        assert!(h.has_dht);
    }

    #[test]
    fn huge_frame_is_just_numbers() {
        let data = minimal(65500, 65500, &[], &[]);
        let h = header_of(&data).unwrap();
        assert_eq!((h.width, h.height), (65500, 65500));
    }

    #[test]
    fn rejects_with_names() {
        let msg = |d: &[u8]| header_of(d).unwrap_err().to_string();
        assert_eq!(
            msg(&[0xFF, 0xD8, 0xFF, 0xD8]),
            "corrupt JPEG: two SOI markers"
        );
        assert!(msg(&[0xFF, 0xD8, 0xFF, 0xD9]).contains("EOI before the first scan"));
        assert!(
            msg(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 1, 0]).contains("APP0 segment has invalid length 1")
        );
        assert!(msg(&[0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF, 0]).starts_with("truncated JPEG"));
        let mut arith = minimal(8, 8, &[], &[]);
        arith[3] = 0xC9;
        assert!(header_of(&arith).unwrap().arithmetic);
        let mut arith_lossless = minimal(8, 8, &[], &[]);
        arith_lossless[3] = 0xCB;
        assert_eq!(msg(&arith_lossless), "unsupported JPEG: lossless");
        let mut lossless = minimal(8, 8, &[], &[]);
        lossless[3] = 0xC3;
        assert_eq!(msg(&lossless), "unsupported JPEG: lossless");
        let mut p12 = minimal(8, 8, &[], &[]);
        p12[6] = 12;
        assert_eq!(msg(&p12), "unsupported JPEG: 12-bit precision");
        let zero = minimal(0, 8, &[], &[]);
        assert_eq!(msg(&zero), "corrupt JPEG: frame width is 0");
        let mut sampling = minimal(8, 8, &[], &[]);
        sampling[13] = 0x55;
        assert!(msg(&sampling).contains("sampling factors 5x5"));
        let mut sos_bad = minimal(8, 8, &[], &[]);
        assert_eq!(&sos_bad[25..27], &[0xFF, 0xDA]);
        sos_bad[30] = 9;
        assert!(msg(&sos_bad).contains("scan uses component 9"));
        assert!(msg(&[0xFF, 0xD8, 0xFF, 0xBE, 0xFF, 0xFF]).contains("unknown marker 0xFFBE"));
        let sos_first = [0xFF, 0xD8, 0xFF, 0xDA, 0, 2];
        assert!(msg(&sos_first).contains("before the frame header"));
        let mut two = minimal(8, 8, &[], &[]);
        let sof: Vec<u8> = two[2..21].to_vec();
        two.splice(2..2, sof);
        assert_eq!(msg(&two), "corrupt JPEG: two SOF markers");
    }

    #[test]
    fn junk_between_markers_is_skipped() {
        let data = minimal(8, 8, &[b'j', b'u', b'n', b'k', 0xFF, 0x00], &[0xFF, 0xD9]);
        assert!(header_of(&data).is_ok());
    }

    #[test]
    fn restart_markers_must_be_in_sequence() {
        let ok = minimal(
            8,
            8,
            &[],
            &[1, 0xFF, 0xD0, 2, 0xFF, 0xD1, 3, 0xFF, 0xD9, 9, 9],
        );
        let h = header_of(&ok).unwrap();
        let scan = check_scan_markers(&ok, h.sos_offset, &h.frame);
        assert_eq!(
            (scan.end, scan.eoi, scan.problem),
            (ok.len() - 2, true, None)
        );
        let bad = minimal(8, 8, &[], &[1, 0xFF, 0xD0, 2, 0xFF, 0xD2, 3, 0xFF, 0xD9]);
        let h = header_of(&bad).unwrap();
        assert_eq!(
            check_scan_markers(&bad, h.sos_offset, &h.frame)
                .problem
                .unwrap()
                .to_string(),
            "corrupt JPEG: restart marker RST2 out of sequence (expected RST1)"
        );
        // Stuffed FF00 is data, and no EOI means "to the end".
        let stuffed = minimal(8, 8, &[], &[0xFF, 0x00, 0xFF, 0xD0]);
        let h = header_of(&stuffed).unwrap();
        let scan = check_scan_markers(&stuffed, h.sos_offset, &h.frame);
        assert_eq!((scan.end, scan.eoi), (stuffed.len(), false));
    }

    #[test]
    fn a_component_no_scan_codes_is_corrupt() {
        // One sequential scan coding only component 3 of 3 (found by the
        // jpeg_differential fuzz target: libjpeg and Pillow decode it as
        // flat gray without a word).
        let mut data = minimal(8, 8, &[], &[]);
        let sos = data.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        data.truncate(sos);
        data.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 3, 0x11, 0, 63, 0, 1, 0xFF, 0xD9]);
        let mut out = Vec::new();
        let h = parse_header(&data, &mut out).unwrap();
        let strict = finish_stream(&data, &h, &mut out.clone(), true).unwrap_err();
        assert_eq!(
            strict.to_string(),
            "corrupt JPEG: component 1 is never coded in any scan"
        );
        let lenient = finish_stream(&data, &h, &mut out, false).unwrap();
        assert_eq!(lenient.warning, Some(strict.to_string()));
        assert_eq!(lenient.scans, 1);
    }

    #[test]
    fn strictness_decides_between_error_and_warning() {
        let bad = minimal(8, 8, &[], &[1, 0xFF, 0xD0, 2, 0xFF, 0xD2, 3, 0xFF, 0xD9]);
        let no_eoi = minimal(8, 8, &[], &[1, 2, 3]);
        for data in [&bad, &no_eoi] {
            let mut out = Vec::new();
            let h = parse_header(data, &mut out).unwrap();
            let mut strict_out = out.clone();
            let strict = finish_stream(data, &h, &mut strict_out, true).unwrap_err();
            let warning = finish_stream(data, &h, &mut out, false)
                .unwrap()
                .warning
                .unwrap();
            assert_eq!(warning, strict.to_string());
        }
        let mut out = Vec::new();
        let good = minimal(8, 8, &[], &[1, 0xFF, 0xD9]);
        let h = parse_header(&good, &mut out).unwrap();
        assert_eq!(
            finish_stream(&good, &h, &mut out, true).unwrap().warning,
            None
        );
    }

    #[test]
    fn missing_huffman_tables_get_the_standard_ones() {
        let mut data = minimal(8, 8, &[], &[0xFF, 0xD9]);
        // Drop the DHT stub (4 bytes right after the 19-byte SOF).
        data.drain(21..25);
        let mut out = Vec::new();
        let h = parse_header(&data, &mut out).unwrap();
        assert!(!h.has_dht);
        finish_stream(&data, &h, &mut out, true).unwrap();
        assert!(out.windows(STANDARD_DHT.len()).any(|w| w == STANDARD_DHT));
    }
}
