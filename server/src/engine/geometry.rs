//! Pure size arithmetic of the resize and crop steps, written to reproduce
//! torchvision's `Resize` / `CenterCrop` on PIL images bit for bit.
//!
//! No pixels here: every function maps sizes to sizes or offsets, so the
//! rules can be unit-tested against the Python expressions they copy.

use pixelfeed_schema::{Crop, Resize, TransformSpec};

/// Where one oriented source image goes: resized to `resized` (height,
/// width), then the `crop` window is cut out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Size after resizing, `(height, width)`.
    pub resized: (u32, u32),
    /// The output window inside the resized image.
    pub crop: Window,
}

/// A `height` × `width` window whose top-left corner is at (`top`, `left`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// First row of the window.
    pub top: u32,
    /// First column of the window.
    pub left: u32,
    /// Rows in the window.
    pub height: u32,
    /// Columns in the window.
    pub width: u32,
}

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

/// torchvision's `center_crop` offsets for a crop of `crop_h` × `crop_w`
/// from an image of `image_h` × `image_w`:
/// `top = int(round((H - h) / 2.0))`, `left = int(round((W - w) / 2.0))`.
/// A crop larger than the image (which a validated spec never asks for)
/// clamps to offset 0.
pub(crate) fn center_crop(image_h: u32, image_w: u32, crop_h: u32, crop_w: u32) -> Window {
    Window {
        top: half_round_even(image_h.saturating_sub(crop_h)),
        left: half_round_even(image_w.saturating_sub(crop_w)),
        height: crop_h,
        width: crop_w,
    }
}

/// The resize and crop of `spec` applied to an (oriented) source image of
/// `height` × `width`.
pub(crate) fn plan(spec: &TransformSpec, height: u32, width: u32) -> Plan {
    let resized = match spec.resize {
        Resize::ShorterSide { size } => shorter_side(size, height, width),
        Resize::Exact { height, width } => (height, width),
    };
    let crop = match spec.crop {
        Some(Crop::Center { height, width }) => center_crop(resized.0, resized.1, height, width),
        None => Window {
            top: 0,
            left: 0,
            height: resized.0,
            width: resized.1,
        },
    };
    Plan { resized, crop }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert_eq!(center_crop(10, 10, 20, 20).top, 0);
    }

    #[test]
    fn plan_follows_the_spec() {
        let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
        let p = plan(&spec, 375, 500);
        assert_eq!(p.resized, (256, 341));
        assert_eq!((p.crop.top, p.crop.left), (16, 58));
        let exact = TransformSpec::from_value(&json!({
            "resize": {"mode": "exact", "height": 32, "width": 48}, "dtype": "uint8"
        }))
        .unwrap();
        let p = plan(&exact, 375, 500);
        assert_eq!(p.resized, (32, 48));
        assert_eq!(
            p.crop,
            Window {
                top: 0,
                left: 0,
                height: 32,
                width: 48
            }
        );
    }
}
