//! Colour conversion with Pillow's integer arithmetic.

/// Pillow's `convert('L')` from RGB: ITU-R 601-2 luma with 16-bit fixed
/// point weights and rounding, `(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`
/// (Pillow's `L24` macro). Writes one byte per pixel of `rgb` into `luma`.
pub(crate) fn rgb_to_luma(rgb: &[u8], luma: &mut [u8]) {
    debug_assert_eq!(rgb.len(), luma.len() * 3);
    for (px, out) in rgb.chunks_exact(3).zip(luma.iter_mut()) {
        let l = u32::from(px[0]) * 19595 + u32::from(px[1]) * 38470 + u32::from(px[2]) * 7471;
        // The weights sum to 65536, so the result is at most 255.
        *out = ((l + 0x8000) >> 16) as u8;
    }
}

/// Pillow's conversion of a CMYK JPEG to RGB, in place: `buf` holds
/// `pixels` CMYK pixels as libjpeg decodes them (4 bytes each) and receives
/// `pixels` RGB pixels (3 bytes each) at its start.
///
/// Pillow reads every CMYK JPEG as `CMYK;I` ("assume adobe conventions":
/// the stored values are inverted, as Photoshop writes them), then
/// `convert('RGB')` computes `R = (255 - K) - (255 - K) * C / 255` with its
/// `MULDIV255` rounding (`Convert.c`, `cmyk2rgb`). With the inversion folded
/// in, that is `R = k - muldiv255(255 - c, k)` on the stored bytes.
pub(crate) fn cmyk_to_rgb(buf: &mut [u8], pixels: usize) {
    debug_assert!(buf.len() >= pixels * 4);
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    for i in 0..pixels {
        let (c, m, y, k) = (
            u32::from(buf[i * 4]),
            u32::from(buf[i * 4 + 1]),
            u32::from(buf[i * 4 + 2]),
            u32::from(buf[i * 4 + 3]),
        );
        // Never negative: muldiv255(255 - c, k) <= k. Writing 3i..3i+3 only
        // touches bytes of pixels already read (3i + 2 < 4i + 4).
        buf[i * 3] = (k - muldiv255(255 - c, k)) as u8;
        buf[i * 3 + 1] = (k - muldiv255(255 - m, k)) as u8;
        buf[i * 3 + 2] = (k - muldiv255(255 - y, k)) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_pillow() {
        // Pillow 13: Image.new('RGB', (1, 1), c).convert('L').getpixel((0, 0))
        let cases: [([u8; 3], u8); 6] = [
            ([0, 0, 0], 0),
            ([255, 255, 255], 255),
            ([255, 0, 0], 76),
            ([0, 255, 0], 150),
            ([0, 0, 255], 29),
            ([10, 200, 30], 124),
        ];
        for (rgb, l) in cases {
            let mut out = [0u8];
            rgb_to_luma(&rgb, &mut out);
            assert_eq!(out[0], l, "{rgb:?}");
        }
    }

    #[test]
    fn cmyk_matches_pillow() {
        // Pillow 13, with its CMYK;I raw mode (stored bytes inverted):
        // Image.frombytes('CMYK', (1, 1), bytes(255 - v for v in stored),
        // ).convert('RGB').getpixel((0, 0))
        let cases: [([u8; 4], [u8; 3]); 5] = [
            ([255, 255, 255, 255], [255, 255, 255]),
            ([0, 0, 0, 0], [0, 0, 0]),
            ([0, 255, 255, 255], [0, 255, 255]),
            ([200, 100, 50, 128], [100, 50, 25]),
            ([17, 230, 99, 250], [17, 225, 97]),
        ];
        for (stored, rgb) in cases {
            let mut buf = stored.to_vec();
            cmyk_to_rgb(&mut buf, 1);
            assert_eq!(&buf[..3], &rgb, "{stored:?}");
        }
        // In place over many pixels: pixel i lands at 3i.
        let mut buf: Vec<u8> = [[200, 100, 50, 128]; 3].concat();
        cmyk_to_rgb(&mut buf, 3);
        assert_eq!(&buf[..9], &[100, 50, 25, 100, 50, 25, 100, 50, 25]);
    }
}
