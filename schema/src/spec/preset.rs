//! The named presets a spec may start from (`{"preset": "imagenet", ...}`).

use serde_json::{json, Value};

/// Names of the built-in presets, in the order `DoAction("presets")` lists them.
pub const PRESET_NAMES: &[&str] = &[
    "imagenet",
    "imagenet_train",
    "clip",
    "siglip",
    "dinov2",
    "raw_u8",
];

const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// The JSON a preset expands to, or `None` for an unknown name.
///
/// Sources of the constants: torchvision's ImageNet reference scripts
/// (`imagenet`, `imagenet_train`), OpenAI CLIP's `_transform`
/// (`clip`), Hugging Face's `SiglipImageProcessor` defaults (`siglip`:
/// 224×224 bicubic, mean = std = 0.5) and DINOv2's `make_classification_eval_transform`
/// (`dinov2`: 256 bicubic, centre 224, ImageNet mean/std).
pub fn preset(name: &str) -> Option<Value> {
    let center = |resize: u32, crop: u32, filter: &str, mean: [f64; 3], std: [f64; 3]| {
        json!({
            "resize": {"mode": "shorter_side", "size": resize},
            "crop": {"mode": "center", "height": crop, "width": crop},
            "filter": filter,
            "color": "rgb",
            "dtype": "float32",
            "layout": "chw",
            "normalize": {"mean": mean, "std": std},
            "exif_orientation": true
        })
    };
    match name {
        "imagenet" => Some(center(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)),
        "imagenet_train" => Some(json!({
            "resize": {"mode": "none"},
            "crop": {"mode": "random_resized_crop", "height": 224, "width": 224,
                     "scale": [0.08, 1.0], "ratio": [0.75, 1.3333333333333333]},
            "flip": {"horizontal_p": 0.5},
            "filter": "bilinear",
            "color": "rgb",
            "dtype": "float32",
            "layout": "chw",
            "normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
            "exif_orientation": true
        })),
        "clip" => Some(center(
            224,
            224,
            "bicubic",
            [0.48145466, 0.4578275, 0.40821073],
            [0.26862954, 0.26130258, 0.27577711],
        )),
        "siglip" => Some(json!({
            "resize": {"mode": "exact", "height": 224, "width": 224},
            "filter": "bicubic",
            "color": "rgb",
            "dtype": "float32",
            "layout": "chw",
            "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            "exif_orientation": true
        })),
        "dinov2" => Some(center(256, 224, "bicubic", IMAGENET_MEAN, IMAGENET_STD)),
        "raw_u8" => Some(json!({
            "resize": {"mode": "shorter_side", "size": 256},
            "crop": {"mode": "center", "height": 224, "width": 224},
            "filter": "bilinear",
            "color": "rgb",
            "dtype": "uint8",
            "layout": "hwc",
            "exif_orientation": true
        })),
        _ => None,
    }
}
