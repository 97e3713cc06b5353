//! torchvision's size rules, as pure functions of sizes: `Resize` (shorter
//! or longer side), the letterbox fit, `center_crop` offsets and
//! `RandomResizedCrop.get_params`. Each reproduces the Python expression it
//! copies, float rounding included, and is tested against it.

use super::{Rect, Window};
use crate::rng::RowRng;

/// torchvision's `_compute_resized_output_size` for an int `size`: the
/// shorter side becomes `size`, the longer `int(size * long / short)`.
///
/// Python evaluates `size * long / short` as an exact integer product then a
/// correctly rounded float64 division, truncated by `int()`; both operands
/// are far below 2^53, so the same f64 division here gives the same result.
pub(crate) fn shorter_side(size: u32, height: u32, width: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let short = short.max(1);
    let new_long = ((u64::from(size) * u64::from(long)) as f64 / f64::from(short)) as u64;
    let new_long = u32::try_from(new_long).unwrap_or(u32::MAX);
    if width <= height {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// Python's `round(x / 2.0)` for a non-negative integer `x`: halves go to
/// the even neighbour (banker's rounding), so `round(1.5) == 2` but
/// `round(2.5) == 2`.
pub(crate) fn half_round_even(x: u32) -> u32 {
    let k = x / 2;
    if x.is_multiple_of(2) || k.is_multiple_of(2) {
        k
    } else {
        k + 1
    }
}

/// torchvision's `Resize(size=None, max_size=size)`: the longer side
/// becomes `size`, the shorter `int(size * short / long)` (at least 1).
pub(crate) fn longer_side(size: u32, height: u32, width: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_short = ((u64::from(size) * u64::from(short)) as f64 / f64::from(long.max(1))) as u32;
    let new_short = new_short.max(1);
    if width <= height {
        (size, new_short)
    } else {
        (new_short, size)
    }
}

/// The letterbox size: the largest `(h, w)` inside `height` × `width` with
/// the source's aspect ratio; the limiting side exact, the other rounded
/// (half to even, as Python's `round`), at least 1.
pub(crate) fn fit(height: u32, width: u32, src_h: u32, src_w: u32) -> (u32, u32) {
    let (src_h, src_w) = (u64::from(src_h.max(1)), u64::from(src_w.max(1)));
    // Compare height/src_h with width/src_w without rounding.
    if u64::from(height) * src_w <= u64::from(width) * src_h {
        let w = ((u64::from(height) * src_w) as f64 / src_h as f64).round_ties_even();
        (height, (w as u32).clamp(1, width))
    } else {
        let h = ((u64::from(width) * src_h) as f64 / src_w as f64).round_ties_even();
        ((h as u32).clamp(1, height), width)
    }
}

/// torchvision's `center_crop` offset along one side: the window of `crop`
/// from a side of `image` pixels; a crop longer than the image pads it
/// first, the image then sitting at `(crop - image) // 2`.
fn center_offset(image: u32, crop: u32) -> i64 {
    if crop > image {
        -i64::from((crop - image) / 2)
    } else {
        i64::from(half_round_even(image - crop))
    }
}

/// torchvision's `center_crop` window for a crop of `crop_h` × `crop_w`
/// from an image of `image_h` × `image_w`:
/// `top = int(round((H - h) / 2.0))`, `left = int(round((W - w) / 2.0))`,
/// padding (negative offsets) where the crop is larger.
pub(crate) fn center_crop(image_h: u32, image_w: u32, crop_h: u32, crop_w: u32) -> Window {
    Window {
        top: center_offset(image_h, crop_h),
        left: center_offset(image_w, crop_w),
        height: crop_h,
        width: crop_w,
    }
}

/// torchvision's `RandomResizedCrop.get_params` on an image of `height` ×
/// `width`, with our row stream in place of torch's generator: ten tries
/// at a region of random area (a `scale` fraction) and log-uniform aspect
/// ratio, then the central fallback clamped to `ratio`.
pub(crate) fn random_resized_crop(
    height: u32,
    width: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut RowRng,
) -> Rect {
    let area = f64::from(height) * f64::from(width);
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform_in(scale.0, scale.1);
        let aspect = rng.uniform_in(log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if w > 0.0 && w <= f64::from(width) && h > 0.0 && h <= f64::from(height) {
            let (h, w) = (h as u32, w as u32);
            let top = rng.below(u64::from(height - h) + 1) as u32;
            let left = rng.below(u64::from(width - w) + 1) as u32;
            return Rect {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = f64::from(width) / f64::from(height.max(1));
    let (h, w) = if in_ratio < ratio.0 {
        let h = (f64::from(width) / ratio.0).round_ties_even() as u32;
        (h.clamp(1, height), width)
    } else if in_ratio > ratio.1 {
        let w = (f64::from(height) * ratio.1).round_ties_even() as u32;
        (height, w.clamp(1, width))
    } else {
        (height, width)
    };
    Rect {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_side_matches_torchvision() {
        // (size, h, w) -> expected (h, w), from torchvision's rule in Python:
        // short, long = sorted((h, w)); int(size * long / short)
        assert_eq!(shorter_side(256, 375, 500), (256, 341));
        assert_eq!(shorter_side(256, 500, 375), (341, 256));
        assert_eq!(shorter_side(256, 427, 640), (256, 383));
        assert_eq!(shorter_side(256, 256, 256), (256, 256));
        assert_eq!(shorter_side(256, 1, 1), (256, 256));
        // 256 * 17 / 333 = 13.07 -> the *longer* side is 333, shorter 17.
        assert_eq!(shorter_side(256, 17, 333), (256, 5014));
        // int() truncates: 256 * 600 / 512 = 300.0 exactly, 224*1000/999 = 224.22.
        assert_eq!(shorter_side(256, 600, 512), (300, 256));
        assert_eq!(shorter_side(224, 999, 1000), (224, 224));
        // Equal sides: w <= h picks width as the short side, result square.
        assert_eq!(shorter_side(7, 3, 3), (7, 7));
    }

    #[test]
    fn float_division_not_integer_division() {
        // 16777217 is not representable in f32: the division must be f64,
        // as Python's is.
        assert_eq!(shorter_side(1, 16_777_217, 1), (16_777_217, 1));
    }

    #[test]
    fn python_round_is_half_even() {
        // round(x / 2.0) for x = 0..=9: 0, 0(0.5), 1, 2(1.5), 2, 2(2.5), 3, 4(3.5), 4, 4(4.5)
        let got: Vec<u32> = (0..10).map(half_round_even).collect();
        assert_eq!(got, vec![0, 0, 1, 2, 2, 2, 3, 4, 4, 4]);
    }

    #[test]
    fn center_crop_offsets() {
        // 256x341 -> 224x224: top = round(16.0) = 16, left = round(58.5) = 58.
        assert_eq!(
            center_crop(256, 341, 224, 224),
            Window {
                top: 16,
                left: 58,
                height: 224,
                width: 224
            }
        );
        // left = round(59.5) = 60 (half to even).
        assert_eq!(center_crop(256, 343, 224, 224).left, 60);
        assert_eq!(center_crop(224, 224, 224, 224).top, 0);
        // Larger than the image: torchvision pads (crop - image) // 2 first.
        assert_eq!(center_crop(10, 10, 20, 21).top, -5);
        assert_eq!(center_crop(10, 10, 20, 21).left, -5);
        assert_eq!(center_crop(10, 30, 13, 20).top, -1);
        assert_eq!(center_crop(10, 30, 13, 20).left, 5);
    }

    #[test]
    fn longer_side_matches_torchvision_max_size() {
        // int(size * short / long)
        assert_eq!(longer_side(256, 375, 500), (192, 256));
        assert_eq!(longer_side(256, 500, 375), (256, 192));
        assert_eq!(longer_side(100, 333, 17), (100, 5));
        assert_eq!(longer_side(10, 1, 1000), (1, 10));
    }

    #[test]
    fn fit_keeps_aspect_inside_the_box() {
        assert_eq!(fit(224, 224, 375, 500), (168, 224));
        assert_eq!(fit(224, 224, 500, 375), (224, 168));
        // 100 * 3 / 2 = 150 > 120: width limits; h = round(120 * 2 / 3) = 80.
        assert_eq!(fit(100, 120, 2, 3), (80, 120));
        // round half to even: 5 * 3 / 2 = 7.5 -> 8, 5 * 5 / 2 = 12.5 -> 12.
        assert_eq!(fit(5, 100, 2, 3), (5, 8));
        assert_eq!(fit(5, 100, 2, 5), (5, 12));
        assert_eq!(fit(4, 4, 1, 10_000), (1, 4));
    }

    #[test]
    fn random_resized_crop_falls_back_like_torchvision() {
        // A scale range no region can satisfy (area > image for every draw
        // is impossible with scale <= 1, so force failure with an extreme
        // ratio on a tall image): the fallback clamps the ratio.
        let mut rng = RowRng::new(0, 0, 0);
        let r = random_resized_crop(1000, 10, (0.99, 1.0), (50.0, 60.0), &mut rng);
        // in_ratio 0.01 < 50: w = width, h = round(10 / 50) = 0 -> clamped to 1.
        assert_eq!((r.height, r.width), (1, 10));
        assert_eq!((r.top, r.left), (499, 0));
        let r = random_resized_crop(10, 1000, (0.99, 1.0), (0.01, 0.02), &mut rng);
        // in_ratio 100 > 0.02: h = height, w = round(10 * 0.02) = 0 -> 1.
        assert_eq!((r.height, r.width, r.left), (10, 1, 499));
    }
}
