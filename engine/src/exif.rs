//! Just enough EXIF and XMP to find the orientation, parsed by hand.
//!
//! Only tag 0x0112 (Orientation) of IFD0 is read. Following IFD links is
//! never needed for it, so a hostile IFD chain (a loop, an offset gigabytes
//! past the end) cannot make the parser hang or read out of bounds: every
//! read is a checked slice access and the only loop is bounded by the entry
//! count of one IFD. Damaged metadata is ignored, never fatal.
//!
//! The precedence copies Pillow's `Image.getexif` + `ImageOps.exif_transpose`:
//! the EXIF Orientation tag wins when present (a present but out-of-range
//! value such as 9 means "no rotation", and XMP is then not consulted);
//! otherwise XMP `tiff:Orientation` (attribute or element form) is used.

use crate::error::RowError;

/// `blob` (EXIF or XMP, named by `kind`), if it is within `limit` bytes;
/// otherwise the row error that [`RowError::MetadataTooLarge`] describes.
pub(crate) fn within_limit<'a>(
    kind: &str,
    blob: &'a [u8],
    limit: usize,
) -> Result<&'a [u8], RowError> {
    if blob.len() > limit {
        return Err(RowError::MetadataTooLarge {
            what: format!("{kind} metadata of {} bytes", blob.len()),
            limit,
        });
    }
    Ok(blob)
}

/// The first few bytes of an APP1 segment that carries EXIF.
pub(crate) const EXIF_PREFIX: &[u8] = b"Exif\0\0";

/// Largest EXIF blob decoded from a hex text chunk (ImageMagick's
/// `Raw profile type exif`); JPEG caps EXIF at 64 KiB, so this is generous.
const MAX_HEX_EXIF: usize = 64 * 1024;

/// The raw Orientation value of IFD0, if the tag is present and readable.
///
/// `tiff` starts at the TIFF header (`II*\0` or `MM\0*`); a leading
/// `Exif\0\0` is skipped. Returns `None` for anything malformed: short
/// data, a bad byte-order mark, an IFD offset out of bounds, or an
/// Orientation entry whose type or count is wrong (as Pillow skips a tag
/// whose data lies outside the blob).
pub(crate) fn orientation_from_tiff(tiff: &[u8]) -> Option<u16> {
    let tiff = tiff.strip_prefix(EXIF_PREFIX).unwrap_or(tiff);
    let big_endian = match tiff.get(0..4)? {
        [b'I', b'I', 42, 0] => false,
        [b'M', b'M', 0, 42] => true,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let ifd0 = usize::try_from(u32_at(4)?).ok()?;
    let count = usize::from(u16_at(ifd0)?);
    for i in 0..count {
        // A truncated IFD ends the walk instead of reading past the blob.
        let entry = ifd0.checked_add(2)?.checked_add(i.checked_mul(12)?)?;
        if entry.checked_add(12)? > tiff.len() {
            return None;
        }
        if u16_at(entry)? != 0x0112 {
            continue;
        }
        let kind = u16_at(entry + 2)?;
        let n = u32_at(entry + 4)?;
        if n != 1 {
            // One SHORT is the only valid form; a bogus count (the hostile
            // corpus has 1e6) means the tag data is not trustworthy.
            return None;
        }
        return match kind {
            3 => u16_at(entry + 8),
            4 => u32_at(entry + 8).map(|v| u16::try_from(v).unwrap_or(u16::MAX)),
            _ => None,
        };
    }
    None
}

/// The raw orientation by Pillow's precedence from an EXIF blob (TIFF
/// header first, `Exif\0\0` allowed) and an XMP packet, either absent:
/// the EXIF Orientation tag, else XMP `tiff:Orientation`. A blob that is
/// read and is over `limit` bytes is the row's error.
pub(crate) fn orientation_from_metadata(
    exif: Option<&[u8]>,
    xmp: Option<&[u8]>,
    limit: usize,
) -> Result<Option<u16>, RowError> {
    if let Some(tiff) = exif {
        if let Some(value) = orientation_from_tiff(within_limit("EXIF", tiff, limit)?) {
            return Ok(Some(value));
        }
    }
    match xmp {
        Some(xmp) => Ok(orientation_from_xmp(within_limit("XMP", xmp, limit)?)),
        None => Ok(None),
    }
}

/// `tiff:Orientation` from an XMP packet, as Pillow's regex
/// `tiff:Orientation(="|>)([0-9])` finds it: the first occurrence followed
/// by `="` or `>` and a digit.
pub(crate) fn orientation_from_xmp(xmp: &[u8]) -> Option<u16> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut rest = xmp;
    while let Some(pos) = find(rest, KEY) {
        let after = &rest[pos + KEY.len()..];
        let digit = match after {
            [b'=', b'"', d, ..] | [b'>', d, ..] => Some(*d),
            _ => None,
        };
        if let Some(d) = digit.filter(u8::is_ascii_digit) {
            return Some(u16::from(d - b'0'));
        }
        rest = after;
    }
    None
}

/// Decodes ImageMagick's `Raw profile type exif` text (a PNG tEXt/zTXt
/// chunk): three header lines (`\nexif\n   <len>\n`) then hex digits split
/// over lines, as Pillow reads it. Returns the EXIF blob, or `None` if the
/// hex is malformed.
pub(crate) fn decode_hex_profile(text: &[u8]) -> Option<Vec<u8>> {
    // Pillow: "".join(text.split("\n")[3:]) -- skip everything up to and
    // including the third newline.
    let mut newlines = 0;
    let start = text.iter().position(|&b| {
        if b == b'\n' {
            newlines += 1;
        }
        newlines == 3
    })? + 1;
    let mut out = Vec::with_capacity((text.len() - start).min(MAX_HEX_EXIF * 2) / 2);
    let mut high: Option<u8> = None;
    for &c in &text[start..] {
        if c.is_ascii_whitespace() {
            continue;
        }
        let v = (c as char).to_digit(16)? as u8;
        match high.take() {
            None => high = Some(v),
            Some(h) => {
                out.push(h << 4 | v);
                if out.len() >= MAX_HEX_EXIF {
                    break;
                }
            }
        }
    }
    Some(out)
}

/// First index of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let off = hay[from..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        let at = from + off;
        if &hay[at..at + needle.len()] == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TIFF blob with IFD0 at offset 8 holding `entries` (tag, type,
    /// count, value-field) and a next-IFD pointer `next`.
    pub(crate) fn tiff(big_endian: bool, entries: &[(u16, u16, u32, u32)], next: u32) -> Vec<u8> {
        let mut v = Vec::new();
        let p16 = |v: &mut Vec<u8>, x: u16| {
            v.extend_from_slice(&if big_endian {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            })
        };
        let p32 = |v: &mut Vec<u8>, x: u32| {
            v.extend_from_slice(&if big_endian {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            })
        };
        v.extend_from_slice(if big_endian { b"MM" } else { b"II" });
        p16(&mut v, 42);
        p32(&mut v, 8);
        p16(&mut v, entries.len() as u16);
        for &(tag, kind, count, value) in entries {
            p16(&mut v, tag);
            p16(&mut v, kind);
            p32(&mut v, count);
            if kind == 3 && count == 1 {
                // A SHORT sits in the first two bytes of the value field.
                p16(&mut v, value as u16);
                p16(&mut v, 0);
            } else {
                p32(&mut v, value);
            }
        }
        p32(&mut v, next);
        v
    }

    #[test]
    fn little_and_big_endian() {
        for be in [false, true] {
            for o in 1..=8u32 {
                let blob = tiff(be, &[(0x010F, 2, 4, 0), (0x0112, 3, 1, o)], 0);
                assert_eq!(orientation_from_tiff(&blob), Some(o as u16));
                let mut prefixed = EXIF_PREFIX.to_vec();
                prefixed.extend_from_slice(&blob);
                assert_eq!(orientation_from_tiff(&prefixed), Some(o as u16));
            }
        }
        // LONG is accepted too.
        assert_eq!(
            orientation_from_tiff(&tiff(true, &[(0x0112, 4, 1, 6)], 0)),
            Some(6)
        );
    }

    #[test]
    fn out_of_range_value_is_reported_raw() {
        // The caller maps values outside 1..=8 to "no rotation".
        assert_eq!(
            orientation_from_tiff(&tiff(false, &[(0x0112, 3, 1, 9)], 0)),
            Some(9)
        );
    }

    #[test]
    fn ifd_loop_terminates_and_still_reads_ifd0() {
        // next-IFD pointer and an ExifIFD pointer both point back at IFD0.
        let blob = tiff(false, &[(0x8769, 4, 1, 8), (0x0112, 3, 1, 6)], 8);
        assert_eq!(orientation_from_tiff(&blob), Some(6));
        let no_orientation = tiff(false, &[(0x8769, 4, 1, 8)], 8);
        assert_eq!(orientation_from_tiff(&no_orientation), None);
    }

    #[test]
    fn out_of_bounds_is_ignored() {
        // IFD0 offset 2 GB past the blob.
        let mut blob = tiff(false, &[(0x0112, 3, 1, 6)], 0);
        blob[4..8].copy_from_slice(&0x8000_0000u32.to_le_bytes());
        assert_eq!(orientation_from_tiff(&blob), None);
        blob[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(orientation_from_tiff(&blob), None);
        // Bogus count with an out-of-bounds offset.
        assert_eq!(
            orientation_from_tiff(&tiff(false, &[(0x0112, 3, 1_000_000, 0x7FFF_FFFF)], 0)),
            None
        );
        // Entry count claims more entries than there are bytes.
        let mut short = tiff(true, &[(0x0112, 3, 1, 3)], 0);
        short[8..10].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(orientation_from_tiff(&short), Some(3));
        short.truncate(14);
        assert_eq!(orientation_from_tiff(&short), None);
        // Garbage and empty input.
        assert_eq!(orientation_from_tiff(b""), None);
        assert_eq!(orientation_from_tiff(b"XX*\0\x08\0\0\0"), None);
        assert_eq!(orientation_from_tiff(b"II*\0"), None);
    }

    #[test]
    fn xmp_attribute_and_element_forms() {
        assert_eq!(
            orientation_from_xmp(br#"<rdf:Description tiff:Orientation="3" />"#),
            Some(3)
        );
        assert_eq!(
            orientation_from_xmp(b"<tiff:Orientation>6</tiff:Orientation>"),
            Some(6)
        );
        // The first well-formed occurrence wins; malformed ones are skipped.
        assert_eq!(
            orientation_from_xmp(br#"tiff:Orientation tiff:Orientation='4' tiff:Orientation="8""#),
            Some(8)
        );
        assert_eq!(orientation_from_xmp(b"nothing here"), None);
        assert_eq!(orientation_from_xmp(b"tiff:Orientation>"), None);
    }

    #[test]
    fn imagemagick_hex_profile() {
        let text =
            b"\nexif\n      32\n4578696600004d4d002a00000008000101120003000000010003000000000000\n";
        let blob = decode_hex_profile(text).unwrap();
        assert!(blob.starts_with(EXIF_PREFIX));
        assert_eq!(orientation_from_tiff(&blob), Some(3));
        assert_eq!(decode_hex_profile(b"\nexif\n 2\nzz\n"), None);
        assert_eq!(decode_hex_profile(b"no newlines"), None);
    }

    #[test]
    fn find_substring() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"aaa", b"a"), Some(0));
        assert_eq!(find(b"xyz", b"z"), Some(2));
    }
}
