//! Image format detection from magic bytes.
//!
//! Only the bytes decide: a file name or content type is never consulted, so
//! a PNG named `.jpg` decodes as PNG and a GIF named `.jpg` as GIF. Formats
//! the engine cannot decode are still recognised so the row error can name
//! them instead of calling them garbage.

/// What the first bytes of an encoded image say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// `FF D8 FF`: JPEG (JFIF, Exif, MPO, ...).
    Jpeg,
    /// The 8-byte PNG signature.
    Png,
    /// `RIFF....WEBP`.
    WebP,
    /// `GIF87a` / `GIF89a`.
    Gif,
    /// `BM`, a file header, and a known info-header size.
    Bmp,
    /// `II*\0` / `MM\0*` (TIFF) or `II+\0` / `MM\0+` (BigTIFF).
    Tiff,
    /// A format recognised but not decoded; the name is for the message.
    Unsupported(&'static str),
    /// Nothing known.
    Unknown,
}

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Classifies `data` by its leading bytes.
pub(crate) fn sniff(data: &[u8]) -> Sniffed {
    if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Sniffed::Jpeg;
    }
    if data.starts_with(PNG_SIGNATURE) {
        return Sniffed::Png;
    }
    let at = |offset: usize, magic: &[u8]| data.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"RIFF") && at(8, b"WEBP") {
        return Sniffed::WebP;
    }
    if at(0, b"GIF87a") || at(0, b"GIF89a") {
        return Sniffed::Gif;
    }
    if at(0, b"II*\0") || at(0, b"MM\0*") || at(0, b"II+\0") || at(0, b"MM\0+") {
        return Sniffed::Tiff;
    }
    // "BM" alone is two letters of text; a known info-header size after
    // the 14-byte file header makes it a bitmap.
    let info_size = data
        .get(14..18)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if at(0, b"BM") && matches!(info_size, Some(12 | 16 | 40 | 52 | 56 | 64 | 108 | 124)) {
        return Sniffed::Bmp;
    }
    if let Some(name) = unsupported_name(data) {
        return Sniffed::Unsupported(name);
    }
    Sniffed::Unknown
}

fn unsupported_name(d: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| d.get(offset..offset + magic.len()) == Some(magic);
    // JP2 signature box, or a raw JPEG 2000 codestream (SOC + SIZ markers).
    if at(0, b"\0\0\0\x0cjP  \r\n\x87\n") || at(0, &[0xFF, 0x4F, 0xFF, 0x51]) {
        return Some("JPEG 2000");
    }
    // JPEG XL: bare codestream or ISO BMFF container.
    if at(0, &[0xFF, 0x0A]) || at(0, b"\0\0\0\x0cJXL \r\n\x87\n") {
        return Some("JPEG XL");
    }
    if at(4, b"ftyp") {
        let brand = d.get(8..12).unwrap_or_default();
        return Some(match brand {
            b"avif" | b"avis" => "AVIF",
            b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"mif1" | b"msf1" => "HEIF",
            _ => "ISO media (MP4/HEIF family)",
        });
    }
    // ICO / CUR: reserved 0, type 1 or 2, then a non-zero image count.
    if (at(0, &[0, 0, 1, 0]) || at(0, &[0, 0, 2, 0])) && d.get(4..6).is_some_and(|n| n != [0, 0]) {
        return Some(if d[2] == 1 { "ICO" } else { "CUR" });
    }
    // PNM: P1..P7 followed by whitespace.
    if d.len() >= 3 && d[0] == b'P' && (b'1'..=b'7').contains(&d[1]) && d[2].is_ascii_whitespace() {
        return Some(if d[1] == b'7' { "PAM" } else { "PNM" });
    }
    if at(0, b"8BPS") {
        return Some("PSD");
    }
    if at(0, b"qoif") {
        return Some("QOI");
    }
    if at(0, b"%PDF") {
        return Some("PDF");
    }
    None
}

/// The first bytes of `data` as lowercase hex pairs, for the "unknown
/// format" message (at most 8 bytes, so the message stays short).
pub(crate) fn first_bytes_hex(data: &[u8]) -> String {
    let shown = &data[..data.len().min(8)];
    let mut s = String::with_capacity(shown.len() * 3 + 4);
    for (i, b) in shown.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02x}"));
    }
    if data.len() > shown.len() {
        s.push_str(" ...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodable_formats() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Sniffed::Jpeg);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR"), Sniffed::Png);
        // A bare SOI without a following marker prefix is not enough.
        assert_eq!(sniff(&[0xFF, 0xD8]), Sniffed::Unknown);
        // A PNG signature cut short is not a PNG.
        assert_eq!(sniff(b"\x89PNG\r\n"), Sniffed::Unknown);
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Sniffed::WebP);
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Sniffed::Gif);
        assert_eq!(sniff(b"GIF87a"), Sniffed::Gif);
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), Sniffed::Tiff);
        assert_eq!(sniff(b"MM\0*\0\0\0\x08"), Sniffed::Tiff);
        assert_eq!(sniff(b"II+\0\x08\0\0\0"), Sniffed::Tiff);
        assert_eq!(
            sniff(b"BM\x36\x00\x0c\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\0\0\0"),
            Sniffed::Bmp
        );
        // "BM" is not a bitmap, nor is a text that starts with it.
        assert_eq!(sniff(b"BM"), Sniffed::Unknown);
        assert_eq!(sniff(b"BMW 3 series, 2019, 40000 km"), Sniffed::Unknown);
    }

    #[test]
    fn recognised_but_unsupported() {
        let cases: &[(&[u8], &str)] = &[
            (b"\0\0\0\x0cjP  \r\n\x87\n\0\0", "JPEG 2000"),
            (&[0xFF, 0x4F, 0xFF, 0x51, 0, 0x2F], "JPEG 2000"),
            (&[0, 0, 1, 0, 1, 0, 32, 32], "ICO"),
            (b"P6\n200 133\n255\n", "PNM"),
            (b"P1 4 4", "PNM"),
            (b"\0\0\0\x1cftypavif", "AVIF"),
            (b"\0\0\0\x18ftypheic", "HEIF"),
        ];
        for (bytes, name) in cases {
            assert_eq!(sniff(bytes), Sniffed::Unsupported(name), "{name}");
        }
    }

    #[test]
    fn unknown_bytes() {
        assert_eq!(sniff(b"<!DOCTYPE html>"), Sniffed::Unknown);
        assert_eq!(sniff(b"P9 nope"), Sniffed::Unknown);
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVE"), Sniffed::Unknown);
        assert_eq!(sniff(&[0, 0, 1, 0, 0, 0]), Sniffed::Unknown);
        assert_eq!(first_bytes_hex(&[0xFF, 0x00, 0x3C]), "ff 00 3c");
        assert_eq!(
            first_bytes_hex(b"0123456789"),
            "30 31 32 33 34 35 36 37 ..."
        );
    }
}
