//! The per-row [`Plan`]: which source region is resized to what size, the
//! output window read out of it (padding where it leaves the image), the
//! flips, and how output pixels map back to the source ([`Mapping`]).
//!
//! No pixels here: the plan is sizes and offsets, from torchvision's size
//! rules ([`size`]) and the row's random draws ([`crate::rng`]), so the
//! arithmetic is unit-tested against the Python expressions it copies.

mod size;

use pixelfeed_schema::{Crop, Flip, Resize, TransformSpec};

use crate::rng::{RowRng, CROP_STREAM, FLIP_STREAM};
use size::{center_crop, fit, longer_side, random_resized_crop, shorter_side};

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
mod tests {
    use super::*;
    use serde_json::json;

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

    mod properties {
        use super::*;
        use pixelfeed_testkit::any_spec;
        use proptest::prelude::*;

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
