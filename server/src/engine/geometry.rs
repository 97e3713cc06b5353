//! Pure size arithmetic of the resize, crop and flip steps, written to
//! reproduce torchvision's `Resize` / `CenterCrop` / `RandomResizedCrop` /
//! `crop` on PIL images bit for bit, plus the per-row random draws.
//!
//! No pixels here: every function maps sizes to sizes or offsets, so the
//! rules can be unit-tested against the Python expressions they copy.

use pixelfeed_schema::{Crop, Flip, Resize, TransformSpec};

/// Where one oriented source image goes: its `source` region is resized to
/// `resized` (height, width), then the output `window` is read out of that,
/// padding with `pad` where the window leaves the image, and flipped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    /// The region of the oriented source that is resized: the whole image,
    /// except for `random_resized_crop`.
    pub source: Rect,
    /// Size after resizing, `(height, width)`.
    pub resized: (u32, u32),
    /// The output window in resized coordinates; may reach past the image.
    pub window: Window,
    /// Pixel value, per output channel, of the window's parts outside the image.
    pub pad: [u8; 3],
    /// Mirror the output left-right.
    pub flip_horizontal: bool,
    /// Mirror the output top-bottom.
    pub flip_vertical: bool,
}

/// A region inside an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rect {
    /// First row.
    pub top: u32,
    /// First column.
    pub left: u32,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

/// A `height` × `width` window whose top-left corner is at (`top`, `left`),
/// which may lie outside the image (negative, or past its end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// First row of the window.
    pub top: i64,
    /// First column of the window.
    pub left: i64,
    /// Rows in the window.
    pub height: u32,
    /// Columns in the window.
    pub width: u32,
}

/// Where a row's output came from, in oriented source pixels: the
/// `geometry` output column (see `pixelfeed_schema::geometry_fields`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Mapping {
    /// Output pixels per source pixel, vertically.
    pub scale_y: f64,
    /// Output pixels per source pixel, horizontally.
    pub scale_x: f64,
    /// Source row of the output's top edge.
    pub box_top: f64,
    /// Source column of the output's left edge.
    pub box_left: f64,
    /// Source rows the output spans.
    pub box_height: f64,
    /// Source columns the output spans.
    pub box_width: f64,
}

impl Plan {
    /// The part of the output window inside the resized image: all that the
    /// resize has to compute (the rest is padding). Empty when the window
    /// lies wholly outside.
    pub(crate) fn visible(&self) -> Rect {
        let (rh, rw) = self.resized;
        let w = self.window;
        let clamp = |v: i64, end: u32| v.clamp(0, i64::from(end)) as u32;
        let (top, bottom) = (clamp(w.top, rh), clamp(w.top + i64::from(w.height), rh));
        let (left, right) = (clamp(w.left, rw), clamp(w.left + i64::from(w.width), rw));
        Rect {
            top,
            left,
            height: bottom - top,
            width: right - left,
        }
    }

    /// The same plan with the window in the coordinates of `part` of the
    /// resized image (what the tensor writer reads when only `part` was
    /// resized).
    pub(crate) fn relative_to(&self, part: Rect) -> Plan {
        Plan {
            window: Window {
                top: self.window.top - i64::from(part.top),
                left: self.window.left - i64::from(part.left),
                ..self.window
            },
            resized: (part.height, part.width),
            ..*self
        }
    }

    /// The output window mapped back to the oriented source.
    pub(crate) fn mapping(&self) -> Mapping {
        let scale_y = f64::from(self.resized.0) / f64::from(self.source.height.max(1));
        let scale_x = f64::from(self.resized.1) / f64::from(self.source.width.max(1));
        Mapping {
            scale_y,
            scale_x,
            box_top: f64::from(self.source.top) + self.window.top as f64 / scale_y,
            box_left: f64::from(self.source.left) + self.window.left as f64 / scale_x,
            box_height: f64::from(self.window.height) / scale_y,
            box_width: f64::from(self.window.width) / scale_x,
        }
    }
}

impl Mapping {
    /// The mapping of an image decoded at 1/`scale` (a draft), expressed in
    /// the full-size source: drafted pixel `i` covers source pixels
    /// `i*scale .. (i+1)*scale`.
    pub(crate) fn undrafted(self, scale: u32) -> Mapping {
        let s = f64::from(scale);
        Mapping {
            scale_y: self.scale_y / s,
            scale_x: self.scale_x / s,
            box_top: self.box_top * s,
            box_left: self.box_left * s,
            box_height: self.box_height * s,
            box_width: self.box_width * s,
        }
    }
}

/// The draft scale (1, 2, 4 or 8) for a plan: the largest reduction that
/// keeps the region to resize at least as large as its resized size in both
/// directions, computed as Pillow's `Image.draft(mode, resized size)`
/// computes it (integer division of the sizes).
pub(crate) fn draft_scale(plan: &Plan) -> u32 {
    let (rh, rw) = plan.resized;
    let fit = (plan.source.width / rw.max(1)).min(plan.source.height / rh.max(1));
    [8, 4, 2].into_iter().find(|&s| s <= fit).unwrap_or(1)
}

/// The per-row random number stream: SplitMix64 seeded from the spec's
/// seed, the row key and the purpose of the draws, so each step's draws are
/// independent of the others and of how rows are batched.
#[derive(Debug, Clone)]
pub(crate) struct RowRng(u64);

/// Purposes of the draws, so adding one step never shifts another's numbers.
const CROP_STREAM: u64 = 1;
const FLIP_STREAM: u64 = 2;

impl RowRng {
    /// The stream for `purpose` of the row keyed `key` under `seed`.
    pub(crate) fn new(seed: u64, key: u64, purpose: u64) -> Self {
        Self(mix(seed ^ mix(key ^ mix(purpose))))
    }

    /// The next 64 random bits (SplitMix64).
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1), 53 random bits.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `low..=high` (f64), as torch's `uniform_(low, high)`.
    fn uniform_in(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// Uniform integer in `0..n` (`n` > 0), unbiased (Lemire's method with rejection).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }
}

/// SplitMix64's output function (a bijective 64-bit mixer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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

/// The resize, crop and flips of `spec` applied to an (oriented) source
/// image of `height` × `width`, for the row keyed `key` (random draws).
pub(crate) fn plan(spec: &TransformSpec, height: u32, width: u32, key: u64) -> Plan {
    let whole = Rect {
        top: 0,
        left: 0,
        height,
        width,
    };
    let (source, resized) = match spec.crop {
        Some(Crop::RandomResized {
            height: out_h,
            width: out_w,
            scale,
            ratio,
        }) => {
            let mut rng = RowRng::new(spec.seed, key, CROP_STREAM);
            let region = random_resized_crop(height, width, scale, ratio, &mut rng);
            (region, (out_h, out_w))
        }
        _ => (
            whole,
            match spec.resize {
                Resize::ShorterSide { size } => shorter_side(size, height, width),
                Resize::LongerSide { size } => longer_side(size, height, width),
                Resize::Exact { height, width } => (height, width),
                Resize::Fit {
                    height: h,
                    width: w,
                    ..
                } => fit(h, w, height, width),
                Resize::None => (height, width),
            },
        ),
    };
    // The canvas the crop is taken from: the resized image, or for `fit`
    // the padded letterbox around it.
    let (canvas, pad) = match spec.resize {
        Resize::Fit {
            height: h,
            width: w,
            pad_value,
        } => (
            Window {
                top: -i64::from((h - resized.0) / 2),
                left: -i64::from((w - resized.1) / 2),
                height: h,
                width: w,
            },
            pad_value,
        ),
        _ => (
            Window {
                top: 0,
                left: 0,
                height: resized.0,
                width: resized.1,
            },
            [0; 3],
        ),
    };
    let window = match spec.crop {
        Some(Crop::Center { height, width }) => {
            let w = center_crop(canvas.height, canvas.width, height, width);
            Window {
                top: canvas.top + w.top,
                left: canvas.left + w.left,
                ..w
            }
        }
        Some(Crop::Box {
            top,
            left,
            height,
            width,
        }) => Window {
            top: canvas.top + i64::from(top),
            left: canvas.left + i64::from(left),
            height,
            width,
        },
        Some(Crop::RandomResized { .. }) | None => canvas,
    };
    let (flip_horizontal, flip_vertical) = match spec.flip {
        Some(Flip {
            horizontal_p,
            vertical_p,
        }) => {
            let mut rng = RowRng::new(spec.seed, key, FLIP_STREAM);
            // Two draws always, so one flip's probability never shifts the other's.
            let h = rng.uniform() < horizontal_p;
            let v = rng.uniform() < vertical_p;
            (h, v)
        }
        None => (false, false),
    };
    Plan {
        source,
        resized,
        window,
        pad,
        flip_horizontal,
        flip_vertical,
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
    fn draft_scale_is_pillows_draft_of_the_resized_size() {
        let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
        // Pillow 13: Image.new('RGB', (w, h)) saved as JPEG, then
        // im.draft('RGB', resized size) -> im.decoderconfig[0] (the scale).
        // 2448x1632 -> 384x256: min(2448 // 384, 1632 // 256) = 6 -> 4.
        assert_eq!(draft_scale(&plan(&spec, 1632, 2448, 0)), 4);
        // 500x375 -> 341x256: 1 (no draft below 2x).
        assert_eq!(draft_scale(&plan(&spec, 375, 500, 0)), 1);
        // 512x512 -> 256x256: exactly 2.
        assert_eq!(draft_scale(&plan(&spec, 512, 512, 0)), 2);
        // 4096x2048 -> 512x256: 8; 8000x6000 -> 341x256 is capped at 8.
        assert_eq!(draft_scale(&plan(&spec, 2048, 4096, 0)), 8);
        assert_eq!(draft_scale(&plan(&spec, 6000, 8000, 0)), 8);
        // No resize at all (resize none + crop): never drafted.
        let none = TransformSpec::from_value(&json!({
            "resize": {"mode": "none"},
            "crop": {"mode": "center", "height": 8, "width": 8}
        }))
        .unwrap();
        assert_eq!(draft_scale(&plan(&none, 4000, 4000, 0)), 1);
        let m = plan(&spec, 408, 612, 0).mapping().undrafted(4);
        assert!((m.scale_x - 384.0 / 612.0 / 4.0).abs() < 1e-12);
        assert!((m.box_width - 224.0 * 612.0 / 384.0 * 4.0).abs() < 1e-9);
    }

    #[test]
    fn fit_pads_centred_and_maps_back() {
        let spec = TransformSpec::from_value(&json!({
            "resize": {"mode": "fit", "height": 224, "width": 224, "pad_value": [1, 2, 3]},
            "dtype": "uint8"
        }))
        .unwrap();
        let p = plan(&spec, 375, 500, 0);
        assert_eq!(p.resized, (168, 224));
        assert_eq!(
            p.window,
            Window {
                top: -28,
                left: 0,
                height: 224,
                width: 224
            }
        );
        assert_eq!(p.pad, [1, 2, 3]);
        let m = p.mapping();
        assert_eq!(m.scale_x, 224.0 / 500.0);
        assert_eq!(m.box_left, 0.0);
        assert!((m.box_top - -28.0 * 375.0 / 168.0).abs() < 1e-9);
        assert!((m.box_width - 500.0).abs() < 1e-9);
    }

    #[test]
    fn random_resized_crop_stays_inside_and_is_reproducible() {
        let spec = TransformSpec::from_json(br#"{"preset":"imagenet_train","seed":7}"#).unwrap();
        let mut seen = std::collections::HashSet::new();
        for key in 0..200 {
            let p = plan(&spec, 375, 500, key);
            assert_eq!(p, plan(&spec, 375, 500, key), "same key, same draws");
            let r = p.source;
            assert!(r.top + r.height <= 375 && r.left + r.width <= 500, "{r:?}");
            let area = f64::from(r.height * r.width) / (375.0 * 500.0);
            // Rounding of the sides can move the area a little past the range.
            assert!((0.07..=1.0).contains(&area), "{area}");
            assert_eq!(p.resized, (224, 224));
            assert_eq!(
                p.window,
                Window {
                    top: 0,
                    left: 0,
                    height: 224,
                    width: 224
                }
            );
            seen.insert((r.top, r.left, r.height, r.width));
        }
        assert!(seen.len() > 190, "draws barely vary: {}", seen.len());
        let other = TransformSpec::from_json(br#"{"preset":"imagenet_train","seed":8}"#).unwrap();
        assert_ne!(plan(&spec, 375, 500, 3), plan(&other, 375, 500, 3));
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

    #[test]
    fn flips_follow_their_probability() {
        let spec = TransformSpec::from_value(&json!({
            "resize": {"mode": "exact", "height": 8, "width": 8},
            "flip": {"horizontal_p": 0.5, "vertical_p": 1.0}, "seed": 1
        }))
        .unwrap();
        let plans: Vec<Plan> = (0..1000).map(|k| plan(&spec, 20, 30, k)).collect();
        let h = plans.iter().filter(|p| p.flip_horizontal).count();
        assert!((400..600).contains(&h), "{h}");
        assert!(plans.iter().all(|p| p.flip_vertical));
    }

    #[test]
    fn rng_below_is_uniform_enough() {
        let mut rng = RowRng::new(1, 2, 3);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[rng.below(3) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn plan_follows_the_spec() {
        let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
        let p = plan(&spec, 375, 500, 0);
        assert_eq!(p.resized, (256, 341));
        assert_eq!((p.window.top, p.window.left), (16, 58));
        let m = p.mapping();
        assert_eq!(m.scale_y, 256.0 / 375.0);
        assert!((m.box_height - 224.0 * 375.0 / 256.0).abs() < 1e-9);
        let exact = TransformSpec::from_value(&json!({
            "resize": {"mode": "exact", "height": 32, "width": 48}, "dtype": "uint8"
        }))
        .unwrap();
        let p = plan(&exact, 375, 500, 0);
        assert_eq!(p.resized, (32, 48));
        assert!(!p.flip_horizontal && !p.flip_vertical);
        assert_eq!(
            p.window,
            Window {
                top: 0,
                left: 0,
                height: 32,
                width: 48
            }
        );
    }

    pub(crate) mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        /// Any spec that validates: every resize mode, every crop mode, flips.
        pub(crate) fn any_spec() -> impl Strategy<Value = Value> {
            let side = 1u32..300;
            let resize = prop_oneof![
                side.clone()
                    .prop_map(|s| json!({"mode": "shorter_side", "size": s})),
                side.clone()
                    .prop_map(|s| json!({"mode": "longer_side", "size": s})),
                (side.clone(), side.clone())
                    .prop_map(|(h, w)| json!({"mode": "exact", "height": h, "width": w})),
                (side.clone(), side.clone(), 0u8..=255).prop_map(
                    |(h, w, p)| json!({"mode": "fit", "height": h, "width": w, "pad_value": p})
                ),
                Just(json!({"mode": "none"})),
            ];
            let crop = prop_oneof![
                Just(Value::Null),
                (side.clone(), side.clone())
                    .prop_map(|(h, w)| json!({"mode": "center", "height": h, "width": w})),
                (-500i32..500, -500i32..500, side.clone(), side.clone()).prop_map(
                    |(t, l, h, w)| json!({"mode": "box", "top": t, "left": l, "height": h, "width": w})
                ),
            ];
            let rrc = (
                side.clone(),
                side,
                0.01f64..1.0,
                0.0f64..1.0,
                0.1f64..3.0,
                1.0f64..4.0,
            )
                .prop_map(|(h, w, s0, s1, r0, r1)| {
                    json!({"mode": "random_resized_crop", "height": h, "width": w,
                           "scale": [s0, s0 + (1.0 - s0) * s1], "ratio": [r0, r0 * r1]})
                });
            let flip = (0.0f64..=1.0, 0.0f64..=1.0);
            prop_oneof![
                (resize, crop).prop_map(|(r, c)| json!({"resize": r, "crop": c})),
                rrc.prop_map(|c| json!({"resize": {"mode": "none"}, "crop": c})),
            ]
            .prop_flat_map(move |v| {
                flip.clone().prop_map(move |(h, w)| {
                    let mut v = v.clone();
                    v["flip"] = json!({"horizontal_p": h, "vertical_p": w});
                    v
                })
            })
        }

        proptest! {
            #[test]
            fn plans_fit_their_image_and_declared_shape(
                value in any_spec(),
                height in 1u32..3000,
                width in 1u32..3000,
                key in any::<u64>(),
            ) {
                // Specs the validator refuses (crop larger than a fixed
                // resize, no crop for a variable size) are out of scope.
                let parsed = TransformSpec::from_value(&value);
                prop_assume!(parsed.is_ok());
                let spec = parsed.unwrap();
                let p = plan(&spec, height, width, key);
                // The output window is exactly the declared output size.
                prop_assert_eq!((p.window.height, p.window.width), spec.output_size());
                // The resized region lies inside the source image.
                let s = p.source;
                prop_assert!(s.height >= 1 && s.width >= 1);
                prop_assert!(s.top + s.height <= height && s.left + s.width <= width);
                prop_assert!(p.resized.0 >= 1 && p.resized.1 >= 1);
                match spec.resize {
                    Resize::Fit { height: h, width: w, .. } => {
                        prop_assert!(p.resized.0 <= h && p.resized.1 <= w);
                        prop_assert!(p.resized.0 == h || p.resized.1 == w);
                    }
                    Resize::None if !matches!(spec.crop, Some(Crop::RandomResized { .. })) => {
                        prop_assert_eq!(p.resized, (height, width));
                    }
                    _ => {}
                }
                // Centre crops that fit sit inside the resized image.
                if let Some(Crop::Center { height: ch, width: cw }) = spec.crop {
                    if ch <= p.resized.0 && cw <= p.resized.1 && !matches!(spec.resize, Resize::Fit { .. }) {
                        prop_assert!(p.window.top >= 0 && p.window.left >= 0);
                        prop_assert!(p.window.top + i64::from(ch) <= i64::from(p.resized.0));
                        prop_assert!(p.window.left + i64::from(cw) <= i64::from(p.resized.1));
                    }
                }
                // The mapping is finite and positive in scale.
                let m = p.mapping();
                prop_assert!(m.scale_x > 0.0 && m.scale_y > 0.0);
                prop_assert!(m.box_top.is_finite() && m.box_width.is_finite());
                // Same key, same plan.
                prop_assert_eq!(p, plan(&spec, height, width, key));
            }
        }
    }
}
