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
}
