//! JSON → [`TransformSpec`]: every field validated, every rejection a
//! [`SpecError`] naming the field.

use serde_json::{Map, Value};

use crate::excerpt;

use super::{
    color_channels, preset, Color, Crop, DType, Filter, Flip, JpegDecoder, Layout, Normalize,
    Resize, SpecError, TransformSpec, MAX_OUTPUT_SIDE, PRESET_NAMES,
};

const TOP_LEVEL_FIELDS: &[&str] = &[
    "preset",
    "resize",
    "crop",
    "filter",
    "color",
    "dtype",
    "layout",
    "normalize",
    "exif_orientation",
    "flip",
    "seed",
    "strict",
    "draft",
    "decoder",
];

impl TransformSpec {
    /// Parses and validates a spec from JSON bytes (the `DoExchange`
    /// descriptor command).
    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| SpecError::new("spec", format!("not valid JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Validates a parsed JSON document. A `preset` field expands first;
    /// every other top-level field then replaces the preset's value whole
    /// (`"normalize": null` removes normalisation).
    pub fn from_value(value: &Value) -> Result<Self, SpecError> {
        let user = value
            .as_object()
            .ok_or_else(|| SpecError::new("spec", "must be a JSON object"))?;
        for key in user.keys() {
            if !TOP_LEVEL_FIELDS.contains(&key.as_str()) {
                return Err(SpecError::new(
                    key.as_str(),
                    format!(
                        "unknown field (expected one of {})",
                        TOP_LEVEL_FIELDS.join(", ")
                    ),
                ));
            }
        }
        let mut merged = Map::new();
        if let Some(name) = user.get("preset") {
            let name = name
                .as_str()
                .ok_or_else(|| SpecError::new("preset", "must be a string"))?;
            let Some(Value::Object(base)) = preset(name) else {
                return Err(SpecError::new(
                    "preset",
                    format!(
                        "unknown preset {} (known: {})",
                        excerpt(name),
                        PRESET_NAMES.join(", ")
                    ),
                ));
            };
            merged = base;
        }
        for (key, field) in user {
            if key != "preset" {
                merged.insert(key.clone(), field.clone());
            }
        }
        Self::from_merged(&merged)
    }

    fn from_merged(m: &Map<String, Value>) -> Result<Self, SpecError> {
        let color = match opt_str(m, "color")?.unwrap_or("rgb") {
            "rgb" => Color::Rgb,
            "bgr" => Color::Bgr,
            "gray" => Color::Gray,
            other => return Err(one_of("color", other, &["rgb", "bgr", "gray"])),
        };
        let channels = color_channels(color);
        let resize = parse_resize(m.get("resize"))?;
        let crop = match m.get("crop") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_crop(v)?),
        };
        let filter = match opt_str(m, "filter")?.unwrap_or("bilinear") {
            "nearest" => Filter::Nearest,
            "bilinear" => Filter::Bilinear,
            "bicubic" => Filter::Bicubic,
            "lanczos3" => Filter::Lanczos3,
            other => {
                return Err(one_of(
                    "filter",
                    other,
                    &["nearest", "bilinear", "bicubic", "lanczos3"],
                ))
            }
        };
        let dtype = match opt_str(m, "dtype")?.unwrap_or("float32") {
            "float32" => DType::Float32,
            "float16" => DType::Float16,
            "bfloat16" => DType::BFloat16,
            "uint8" => DType::UInt8,
            other => {
                return Err(one_of(
                    "dtype",
                    other,
                    &["float32", "float16", "bfloat16", "uint8"],
                ))
            }
        };
        let layout = match opt_str(m, "layout")?.unwrap_or("chw") {
            "chw" => Layout::Chw,
            "hwc" => Layout::Hwc,
            other => return Err(one_of("layout", other, &["chw", "hwc"])),
        };
        let exif_orientation = opt_bool(m, "exif_orientation", true)?;
        let strict = opt_bool(m, "strict", false)?;
        let draft = opt_bool(m, "draft", false)?;
        let decoder = match opt_str(m, "decoder")?.unwrap_or("auto") {
            "auto" => JpegDecoder::Auto,
            "libjpeg-turbo" => JpegDecoder::LibjpegTurbo,
            "zune-jpeg" => JpegDecoder::ZuneJpeg,
            other => {
                return Err(one_of(
                    "decoder",
                    other,
                    &["auto", "libjpeg-turbo", "zune-jpeg"],
                ))
            }
        };
        if draft && decoder == JpegDecoder::ZuneJpeg {
            return Err(SpecError::new(
                "draft",
                "needs decoder libjpeg-turbo (or auto): zune-jpeg cannot decode at a reduced scale",
            ));
        }
        let normalize = match m.get("normalize") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_normalize(v, channels)?),
        };
        if normalize.is_some() && dtype == DType::UInt8 {
            return Err(SpecError::new(
                "normalize",
                "only allowed with a float dtype (uint8 output carries raw pixels)",
            ));
        }
        let flip = match m.get("flip") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_flip(v)?),
        };
        let seed = match m.get("seed") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| SpecError::new("seed", "must be an integer from 0 to 2^64-1"))?,
        };
        let spec = Self {
            resize,
            crop,
            filter,
            color,
            dtype,
            layout,
            normalize,
            exif_orientation,
            flip,
            seed,
            strict,
            draft,
            decoder,
        };
        spec.check_output_is_fixed()?;
        Ok(spec)
    }

    /// Rejects resize/crop combinations whose output size is not fixed by
    /// the spec, or whose crop cannot fit the resized image of any source.
    fn check_output_is_fixed(&self) -> Result<(), SpecError> {
        let fixed_resize = match self.resize {
            Resize::Exact { height, width } | Resize::Fit { height, width, .. } => {
                Some((height, width, "resize.height", "resize.width"))
            }
            Resize::ShorterSide { size } => Some((size, size, "resize.size", "resize.size")),
            Resize::LongerSide { .. } | Resize::None => None,
        };
        match self.crop {
            None => match self.resize {
                Resize::Exact { .. } | Resize::Fit { .. } => Ok(()),
                _ => Err(SpecError::new(
                    "crop",
                    format!(
                        "required with resize.mode {}: the output size must be fixed by the spec \
                         (use resize.mode exact or fit, or add a crop)",
                        resize_mode_name(&self.resize)
                    ),
                )),
            },
            Some(Crop::RandomResized { .. }) => {
                if self.resize != Resize::None {
                    return Err(SpecError::new(
                        "resize.mode",
                        "must be none with crop.mode random_resized_crop, which resizes the \
                         region it picks itself",
                    ));
                }
                Ok(())
            }
            Some(Crop::Center { height, width }) => match fixed_resize {
                // A centre crop larger than a fixed resize would only be padding.
                Some((rh, rw, field_h, field_w)) => {
                    if height > rh {
                        return Err(SpecError::new(
                            "crop.height",
                            format!("{height} is larger than {field_h} {rh}; the crop must fit inside every resized image"),
                        ));
                    }
                    if width > rw {
                        return Err(SpecError::new(
                            "crop.width",
                            format!("{width} is larger than {field_w} {rw}; the crop must fit inside every resized image"),
                        ));
                    }
                    Ok(())
                }
                None => Ok(()),
            },
            Some(Crop::Box { .. }) => Ok(()),
        }
    }
}

fn one_of(field: &str, got: &str, allowed: &[&str]) -> SpecError {
    SpecError::new(
        field,
        format!(
            "unknown value {} (expected one of {})",
            excerpt(got),
            allowed.join(", ")
        ),
    )
}

pub(super) fn resize_mode_name(resize: &Resize) -> &'static str {
    match resize {
        Resize::ShorterSide { .. } => "shorter_side",
        Resize::LongerSide { .. } => "longer_side",
        Resize::Exact { .. } => "exact",
        Resize::Fit { .. } => "fit",
        Resize::None => "none",
    }
}

fn opt_bool(m: &Map<String, Value>, field: &str, default: bool) -> Result<bool, SpecError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(SpecError::new(field, "must be true or false")),
    }
}

fn opt_str<'a>(m: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, SpecError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(SpecError::new(field, "must be a string")),
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, SpecError> {
    v.as_object()
        .ok_or_else(|| SpecError::new(field, "must be a JSON object"))
}

fn side(m: &Map<String, Value>, parent: &str, key: &str) -> Result<u32, SpecError> {
    let field = format!("{parent}.{key}");
    let v = m
        .get(key)
        .ok_or_else(|| SpecError::new(&field, "is required"))?;
    let n = v
        .as_u64()
        .ok_or_else(|| SpecError::new(&field, "must be a positive integer"))?;
    if n == 0 || n > u64::from(MAX_OUTPUT_SIDE) {
        return Err(SpecError::new(
            &field,
            format!("must be between 1 and {MAX_OUTPUT_SIDE}, got {n}"),
        ));
    }
    Ok(n as u32)
}

fn reject_unknown(m: &Map<String, Value>, parent: &str, allowed: &[&str]) -> Result<(), SpecError> {
    for key in m.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(SpecError::new(
                format!("{parent}.{key}"),
                format!("unknown field (expected {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn mode<'a>(m: &'a Map<String, Value>, parent: &str) -> Result<&'a str, SpecError> {
    let field = format!("{parent}.mode");
    m.get("mode")
        .ok_or_else(|| SpecError::new(&field, "is required"))?
        .as_str()
        .ok_or_else(|| SpecError::new(&field, "must be a string"))
}

fn parse_resize(v: Option<&Value>) -> Result<Resize, SpecError> {
    let v = match v {
        None | Some(Value::Null) => return Ok(Resize::None),
        Some(v) => v,
    };
    let m = object(v, "resize")?;
    match mode(m, "resize")? {
        "shorter_side" => {
            reject_unknown(m, "resize", &["mode", "size"])?;
            Ok(Resize::ShorterSide {
                size: side(m, "resize", "size")?,
            })
        }
        "longer_side" => {
            reject_unknown(m, "resize", &["mode", "size"])?;
            Ok(Resize::LongerSide {
                size: side(m, "resize", "size")?,
            })
        }
        "exact" => {
            reject_unknown(m, "resize", &["mode", "height", "width"])?;
            Ok(Resize::Exact {
                height: side(m, "resize", "height")?,
                width: side(m, "resize", "width")?,
            })
        }
        "fit" => {
            reject_unknown(m, "resize", &["mode", "height", "width", "pad_value"])?;
            Ok(Resize::Fit {
                height: side(m, "resize", "height")?,
                width: side(m, "resize", "width")?,
                pad_value: parse_pad_value(m.get("pad_value"))?,
            })
        }
        "none" => {
            reject_unknown(m, "resize", &["mode"])?;
            Ok(Resize::None)
        }
        other => Err(one_of(
            "resize.mode",
            other,
            &["shorter_side", "longer_side", "exact", "fit", "none"],
        )),
    }
}

/// `pad_value`: one 0–255 integer for every channel, or one per channel
/// (three; gray output uses the first).
fn parse_pad_value(v: Option<&Value>) -> Result<[u8; 3], SpecError> {
    const FIELD: &str = "resize.pad_value";
    let byte = |x: &Value| -> Result<u8, SpecError> {
        x.as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| SpecError::new(FIELD, "must hold integers from 0 to 255 (pixel values)"))
    };
    match v {
        None | Some(Value::Null) => Ok([0; 3]),
        Some(Value::Array(items)) => match items.as_slice() {
            [one] => Ok([byte(one)?; 3]),
            [r, g, b] => Ok([byte(r)?, byte(g)?, byte(b)?]),
            _ => Err(SpecError::new(
                FIELD,
                format!("needs 1 or 3 values, got {}", items.len()),
            )),
        },
        Some(one) => Ok([byte(one)?; 3]),
    }
}

fn parse_crop(v: &Value) -> Result<Crop, SpecError> {
    let m = object(v, "crop")?;
    match mode(m, "crop")? {
        "center" => {
            reject_unknown(m, "crop", &["mode", "height", "width"])?;
            Ok(Crop::Center {
                height: side(m, "crop", "height")?,
                width: side(m, "crop", "width")?,
            })
        }
        "box" => {
            reject_unknown(m, "crop", &["mode", "top", "left", "height", "width"])?;
            let offset = |key: &str| -> Result<i32, SpecError> {
                let field = format!("crop.{key}");
                m.get(key)
                    .ok_or_else(|| SpecError::new(&field, "is required"))?
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| SpecError::new(&field, "must be an integer (pixels)"))
            };
            Ok(Crop::Box {
                top: offset("top")?,
                left: offset("left")?,
                height: side(m, "crop", "height")?,
                width: side(m, "crop", "width")?,
            })
        }
        "random_resized_crop" => {
            reject_unknown(m, "crop", &["mode", "height", "width", "scale", "ratio"])?;
            let scale = range(m, "crop", "scale", (0.08, 1.0))?;
            if !(scale.0 > 0.0 && scale.1 <= 1.0) {
                return Err(SpecError::new(
                    "crop.scale",
                    "must lie within (0, 1]: fractions of the image area",
                ));
            }
            let ratio = range(m, "crop", "ratio", (3.0 / 4.0, 4.0 / 3.0))?;
            if ratio.0 <= 0.0 {
                return Err(SpecError::new("crop.ratio", "must be positive"));
            }
            Ok(Crop::RandomResized {
                height: side(m, "crop", "height")?,
                width: side(m, "crop", "width")?,
                scale,
                ratio,
            })
        }
        other => Err(one_of(
            "crop.mode",
            other,
            &["center", "box", "random_resized_crop"],
        )),
    }
}

/// A `[low, high]` pair of finite numbers with low <= high (`default` when absent).
fn range(
    m: &Map<String, Value>,
    parent: &str,
    key: &str,
    default: (f64, f64),
) -> Result<(f64, f64), SpecError> {
    let field = format!("{parent}.{key}");
    let Some(v) = m.get(key).filter(|v| !v.is_null()) else {
        return Ok(default);
    };
    let pair = v
        .as_array()
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_f64()?, a[1].as_f64()?)))
        .filter(|(lo, hi)| lo.is_finite() && hi.is_finite())
        .ok_or_else(|| SpecError::new(&field, "must be [low, high] (two numbers)"))?;
    if pair.0 > pair.1 {
        return Err(SpecError::new(&field, "low must not exceed high"));
    }
    Ok(pair)
}

fn parse_flip(v: &Value) -> Result<Flip, SpecError> {
    let m = object(v, "flip")?;
    reject_unknown(m, "flip", &["horizontal_p", "vertical_p"])?;
    let p = |key: &str| -> Result<f64, SpecError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(0.0),
            Some(x) => x
                .as_f64()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| {
                    SpecError::new(format!("flip.{key}"), "must be a probability in [0, 1]")
                }),
        }
    };
    Ok(Flip {
        horizontal_p: p("horizontal_p")?,
        vertical_p: p("vertical_p")?,
    })
}

fn parse_normalize(v: &Value, channels: usize) -> Result<Normalize, SpecError> {
    let m = object(v, "normalize")?;
    reject_unknown(m, "normalize", &["mean", "std"])?;
    let list = |key: &str| -> Result<Vec<f32>, SpecError> {
        let field = format!("normalize.{key}");
        let arr = m
            .get(key)
            .ok_or_else(|| SpecError::new(&field, "is required"))?
            .as_array()
            .ok_or_else(|| SpecError::new(&field, "must be an array of numbers"))?;
        if arr.len() != channels {
            return Err(SpecError::new(
                &field,
                format!(
                    "needs one value per output channel ({channels}), got {}",
                    arr.len()
                ),
            ));
        }
        // Finite as float32, the type the values are kept in: 1e100 is a
        // finite f64 but an infinite f32 (found by the `spec` fuzz target).
        arr.iter()
            .map(|x| {
                x.as_f64()
                    .map(|f| f as f32)
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| SpecError::new(&field, "must contain numbers finite in float32"))
            })
            .collect()
    };
    let mean = list("mean")?;
    let std = list("std")?;
    if std.contains(&0.0) {
        return Err(SpecError::new("normalize.std", "must not contain 0"));
    }
    // Every output, (x - mean) / std for x in [0, 1], must be a finite
    // float32; the extremes are at x = 0 and x = 1.
    let overflows = mean
        .iter()
        .zip(&std)
        .any(|(m, s)| [0.0f32, 1.0].iter().any(|x| !((x - m) / s).is_finite()));
    if overflows {
        return Err(SpecError::new(
            "normalize",
            "mean and std give outputs beyond the float32 range",
        ));
    }
    Ok(Normalize { mean, std })
}
