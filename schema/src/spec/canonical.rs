//! [`TransformSpec`] → its canonical resolved JSON (presets expanded,
//! defaults filled in), the form stored in output schema metadata and
//! tickets. Parsing it again yields an equal spec.

use serde_json::{json, Value};

use super::parse::resize_mode_name;
use super::{Color, Crop, Filter, Layout, Resize, TransformSpec};

impl TransformSpec {
    /// The fully resolved spec as canonical JSON (presets expanded, defaults
    /// filled in). Parsing it again yields an equal spec.
    pub fn to_value(&self) -> Value {
        let mode = resize_mode_name(&self.resize);
        let resize = match self.resize {
            Resize::ShorterSide { size } | Resize::LongerSide { size } => {
                json!({"mode": mode, "size": size})
            }
            Resize::Exact { height, width } => {
                json!({"mode": mode, "height": height, "width": width})
            }
            Resize::Fit {
                height,
                width,
                pad_value,
            } => json!({"mode": mode, "height": height, "width": width, "pad_value": pad_value}),
            Resize::None => json!({"mode": mode}),
        };
        let crop = match self.crop {
            Some(Crop::Center { height, width }) => {
                json!({"mode": "center", "height": height, "width": width})
            }
            Some(Crop::Box {
                top,
                left,
                height,
                width,
            }) => {
                json!({"mode": "box", "top": top, "left": left, "height": height, "width": width})
            }
            Some(Crop::RandomResized {
                height,
                width,
                scale,
                ratio,
            }) => json!({
                "mode": "random_resized_crop", "height": height, "width": width,
                "scale": [scale.0, scale.1], "ratio": [ratio.0, ratio.1]
            }),
            None => Value::Null,
        };
        let normalize = match &self.normalize {
            Some(n) => json!({"mean": shortest_f64(&n.mean), "std": shortest_f64(&n.std)}),
            None => Value::Null,
        };
        let flip = match self.flip {
            Some(f) => json!({"horizontal_p": f.horizontal_p, "vertical_p": f.vertical_p}),
            None => Value::Null,
        };
        json!({
            "resize": resize,
            "crop": crop,
            "filter": match self.filter {
                Filter::Nearest => "nearest",
                Filter::Bilinear => "bilinear",
                Filter::Bicubic => "bicubic",
                Filter::Lanczos3 => "lanczos3",
            },
            "color": match self.color {
                Color::Rgb => "rgb",
                Color::Bgr => "bgr",
                Color::Gray => "gray",
            },
            "dtype": self.dtype.name(),
            "layout": match self.layout { Layout::Chw => "chw", Layout::Hwc => "hwc" },
            "normalize": normalize,
            "exif_orientation": self.exif_orientation,
            "flip": flip,
            "seed": self.seed,
            "strict": self.strict,
            "draft": self.draft,
            "decoder": self.decoder.name(),
        })
    }

    /// [`Self::to_value`] serialised to a compact JSON string.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }
}

/// Widens f32 values to the f64 with the same shortest decimal form, so the
/// resolved spec says `0.485`, not `0.48500001430511475`.
fn shortest_f64(values: &[f32]) -> Vec<f64> {
    values
        .iter()
        .map(|v| v.to_string().parse().unwrap_or(f64::from(*v)))
        .collect()
}
