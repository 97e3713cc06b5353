//! The transform spec: what the client asks the server to do with each image.
//!
//! A spec arrives as JSON (the `DoExchange` descriptor's command bytes). It is
//! parsed from a [`serde_json::Value`] by hand rather than with serde derive so
//! that every rejection names the offending field (`crop.height: must be ...`),
//! which is what a user debugging a training script needs to see.

use serde_json::{json, Map, Value};

/// The largest output side length a spec may ask for. Bounds the per-row
/// output buffer (16384² × 3 × 4 bytes is already 3 GiB), so a hostile spec
/// cannot make the server allocate without limit.
pub const MAX_OUTPUT_SIDE: u32 = 16384;

/// A spec that failed validation, naming the field that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Dotted path of the offending field, e.g. `crop.height`; `spec` for the
    /// document as a whole.
    pub field: String,
    /// What is wrong with it, in words a user can act on.
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// How the source image is scaled before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Scale so the shorter side equals `size`, keeping the aspect ratio; the
    /// longer side becomes `int(size * long / short)` as in torchvision.
    ShorterSide {
        /// Target length of the shorter side.
        size: u32,
    },
    /// Scale to exactly `height` × `width`, ignoring the aspect ratio.
    Exact {
        /// Output height in pixels.
        height: u32,
        /// Output width in pixels.
        width: u32,
    },
}

/// How the resized image is cut down to the output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crop {
    /// A `height` × `width` window centred as torchvision's `center_crop`
    /// places it: offsets `int(round((H - h) / 2))`, `int(round((W - w) / 2))`.
    Center {
        /// Crop height in pixels.
        height: u32,
        /// Crop width in pixels.
        width: u32,
    },
}

/// Resampling filter, with Pillow's antialiased (support scales with the
/// downscale factor) semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Nearest neighbour.
    Nearest,
    /// Triangle filter (Pillow `BILINEAR`).
    Bilinear,
    /// Catmull-Rom cubic, a = -0.5 (Pillow `BICUBIC`).
    Bicubic,
    /// Lanczos with 3 lobes (Pillow `LANCZOS`).
    Lanczos3,
}

/// Output colour model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    /// Three channels, R, G, B.
    Rgb,
    /// One luminance channel (ITU-R 601 weights, as Pillow's `convert('L')`).
    Gray,
}

/// Element type of the output tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE 754 single precision; pixel/255, then normalised if asked.
    Float32,
    /// Raw 0–255 pixel values.
    UInt8,
}

/// Memory order of one row's tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Channel, height, width (PyTorch).
    Chw,
    /// Height, width, channel (TensorFlow, JAX, raw image order).
    Hwc,
}

/// Per-channel `(x - mean) / std` applied after scaling pixels to 0–1.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    /// One mean per output channel.
    pub mean: Vec<f32>,
    /// One standard deviation per output channel, all non-zero.
    pub std: Vec<f32>,
}

/// A validated transform spec. Construct it with [`TransformSpec::from_json`]
/// (or [`TransformSpec::from_value`]); every instance satisfies the
/// invariants checked there, so consumers never re-validate.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformSpec {
    /// Scaling step.
    pub resize: Resize,
    /// Cropping step, applied after resizing.
    pub crop: Option<Crop>,
    /// Resampling filter for `resize`.
    pub filter: Filter,
    /// Output colour model.
    pub color: Color,
    /// Output element type.
    pub dtype: DType,
    /// Output memory order.
    pub layout: Layout,
    /// Optional normalisation; only with `dtype: float32`.
    pub normalize: Option<Normalize>,
    /// Whether EXIF orientation (tag 0x0112) is applied before resizing.
    pub exif_orientation: bool,
}

/// Names of the built-in presets, in the order `DoAction("presets")` lists them.
pub const PRESET_NAMES: &[&str] = &["imagenet"];

/// The JSON a preset expands to, or `None` for an unknown name.
pub fn preset(name: &str) -> Option<Value> {
    match name {
        "imagenet" => Some(json!({
            "resize": {"mode": "shorter_side", "size": 256},
            "crop": {"mode": "center", "height": 224, "width": 224},
            "filter": "bilinear",
            "color": "rgb",
            "dtype": "float32",
            "layout": "chw",
            "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "exif_orientation": true
        })),
        _ => None,
    }
}

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
                        "unknown preset {name:?} (known: {})",
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
        let color = match opt_str(m, "color")?.unwrap_or("rgb") {
            "rgb" => Color::Rgb,
            "gray" => Color::Gray,
            other => return Err(one_of("color", other, &["rgb", "gray"])),
        };
        let dtype = match opt_str(m, "dtype")?.unwrap_or("float32") {
            "float32" => DType::Float32,
            "uint8" => DType::UInt8,
            other => return Err(one_of("dtype", other, &["float32", "uint8"])),
        };
        let layout = match opt_str(m, "layout")?.unwrap_or("chw") {
            "chw" => Layout::Chw,
            "hwc" => Layout::Hwc,
            other => return Err(one_of("layout", other, &["chw", "hwc"])),
        };
        let exif_orientation = match m.get("exif_orientation") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(SpecError::new("exif_orientation", "must be true or false")),
        };
        let channels = match color {
            Color::Rgb => 3,
            Color::Gray => 1,
        };
        let normalize = match m.get("normalize") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_normalize(v, channels)?),
        };
        if normalize.is_some() && dtype == DType::UInt8 {
            return Err(SpecError::new(
                "normalize",
                "only allowed with dtype float32 (uint8 output carries raw pixels)",
            ));
        }
        let spec = Self {
            resize,
            crop,
            filter,
            color,
            dtype,
            layout,
            normalize,
            exif_orientation,
        };
        spec.check_output_is_fixed()?;
        Ok(spec)
    }

    fn check_output_is_fixed(&self) -> Result<(), SpecError> {
        match (self.resize, self.crop) {
            (Resize::ShorterSide { .. }, None) => Err(SpecError::new(
                "crop",
                "required with resize.mode shorter_side: the output size must be fixed by the spec",
            )),
            (Resize::ShorterSide { size }, Some(Crop::Center { height, width })) => {
                if height > size {
                    return Err(SpecError::new(
                        "crop.height",
                        format!("{height} is larger than resize.size {size}; the crop must fit inside every resized image"),
                    ));
                }
                if width > size {
                    return Err(SpecError::new(
                        "crop.width",
                        format!("{width} is larger than resize.size {size}; the crop must fit inside every resized image"),
                    ));
                }
                Ok(())
            }
            (
                Resize::Exact {
                    height: rh,
                    width: rw,
                },
                Some(Crop::Center { height, width }),
            ) => {
                if height > rh {
                    return Err(SpecError::new(
                        "crop.height",
                        format!("{height} is larger than resize.height {rh}"),
                    ));
                }
                if width > rw {
                    return Err(SpecError::new(
                        "crop.width",
                        format!("{width} is larger than resize.width {rw}"),
                    ));
                }
                Ok(())
            }
            (Resize::Exact { .. }, None) => Ok(()),
        }
    }

    /// Number of output channels (3 for RGB, 1 for gray).
    pub fn channels(&self) -> usize {
        match self.color {
            Color::Rgb => 3,
            Color::Gray => 1,
        }
    }

    /// Output image height and width in pixels (after resize and crop).
    pub fn output_size(&self) -> (u32, u32) {
        match (self.crop, self.resize) {
            (Some(Crop::Center { height, width }), _) => (height, width),
            (None, Resize::Exact { height, width }) => (height, width),
            // Unreachable for a validated spec: `check_output_is_fixed`
            // rejects shorter_side without a crop.
            (None, Resize::ShorterSide { size }) => (size, size),
        }
    }

    /// The per-row tensor shape in layout order, e.g. `[3, 224, 224]` for CHW.
    pub fn shape(&self) -> [usize; 3] {
        let (h, w) = self.output_size();
        let (h, w, c) = (h as usize, w as usize, self.channels());
        match self.layout {
            Layout::Chw => [c, h, w],
            Layout::Hwc => [h, w, c],
        }
    }

    /// Names of the shape's dimensions, in the same order as [`Self::shape`].
    pub fn dim_names(&self) -> [&'static str; 3] {
        match self.layout {
            Layout::Chw => ["C", "H", "W"],
            Layout::Hwc => ["H", "W", "C"],
        }
    }

    /// Number of elements in one row's tensor.
    pub fn elements_per_row(&self) -> usize {
        self.shape().iter().product()
    }

    /// Size in bytes of one output element.
    pub fn element_bytes(&self) -> usize {
        match self.dtype {
            DType::Float32 => 4,
            DType::UInt8 => 1,
        }
    }

    /// Size in bytes of one row's tensor.
    pub fn row_bytes(&self) -> usize {
        self.elements_per_row() * self.element_bytes()
    }

    /// The fully resolved spec as canonical JSON (presets expanded, defaults
    /// filled in). Parsing it again yields an equal spec.
    pub fn to_value(&self) -> Value {
        let resize = match self.resize {
            Resize::ShorterSide { size } => json!({"mode": "shorter_side", "size": size}),
            Resize::Exact { height, width } => {
                json!({"mode": "exact", "height": height, "width": width})
            }
        };
        let crop = match self.crop {
            Some(Crop::Center { height, width }) => {
                json!({"mode": "center", "height": height, "width": width})
            }
            None => Value::Null,
        };
        let normalize = match &self.normalize {
            Some(n) => json!({"mean": shortest_f64(&n.mean), "std": shortest_f64(&n.std)}),
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
            "color": match self.color { Color::Rgb => "rgb", Color::Gray => "gray" },
            "dtype": match self.dtype { DType::Float32 => "float32", DType::UInt8 => "uint8" },
            "layout": match self.layout { Layout::Chw => "chw", Layout::Hwc => "hwc" },
            "normalize": normalize,
            "exif_orientation": self.exif_orientation,
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

fn one_of(field: &str, got: &str, allowed: &[&str]) -> SpecError {
    SpecError::new(
        field,
        format!(
            "unknown value {got:?} (expected one of {})",
            allowed.join(", ")
        ),
    )
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
        None | Some(Value::Null) => {
            return Err(SpecError::new(
                "resize",
                "is required (or use \"preset\": \"imagenet\")",
            ))
        }
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
        "exact" => {
            reject_unknown(m, "resize", &["mode", "height", "width"])?;
            Ok(Resize::Exact {
                height: side(m, "resize", "height")?,
                width: side(m, "resize", "width")?,
            })
        }
        other => Err(one_of("resize.mode", other, &["shorter_side", "exact"])),
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
        other => Err(one_of("crop.mode", other, &["center"])),
    }
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
        arr.iter()
            .map(|x| {
                x.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f as f32)
                    .ok_or_else(|| SpecError::new(&field, "must contain finite numbers"))
            })
            .collect()
    };
    let mean = list("mean")?;
    let std = list("std")?;
    if std.contains(&0.0) {
        return Err(SpecError::new("normalize.std", "must not contain 0"));
    }
    Ok(Normalize { mean, std })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: Value) -> SpecError {
        TransformSpec::from_value(&v).unwrap_err()
    }

    #[test]
    fn imagenet_preset_expands_to_the_documented_spec() {
        let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
        assert_eq!(spec.resize, Resize::ShorterSide { size: 256 });
        assert_eq!(
            spec.crop,
            Some(Crop::Center {
                height: 224,
                width: 224
            })
        );
        assert_eq!(spec.filter, Filter::Bilinear);
        assert_eq!(spec.dtype, DType::Float32);
        assert_eq!(spec.layout, Layout::Chw);
        assert_eq!(
            spec.normalize.as_ref().unwrap().std,
            vec![0.229, 0.224, 0.225]
        );
        assert!(spec.exif_orientation);
        assert_eq!(spec.shape(), [3, 224, 224]);
        assert_eq!(spec.row_bytes(), 3 * 224 * 224 * 4);
    }

    #[test]
    fn explicit_fields_override_the_preset() {
        let spec = TransformSpec::from_value(&json!({
            "preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": null
        }))
        .unwrap();
        assert_eq!(spec.dtype, DType::UInt8);
        assert_eq!(spec.normalize, None);
        assert_eq!(spec.shape(), [224, 224, 3]);
        assert_eq!(spec.dim_names(), ["H", "W", "C"]);
    }

    #[test]
    fn resolved_json_round_trips() {
        let spec = TransformSpec::from_json(
            br#"{"preset":"imagenet","color":"gray","normalize":{"mean":[0.5],"std":[0.5]}}"#,
        )
        .unwrap();
        let again = TransformSpec::from_value(&spec.to_value()).unwrap();
        assert_eq!(spec, again);
        let imagenet = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
        assert!(
            imagenet.to_json().contains(r#""mean":[0.485,0.456,0.406]"#),
            "{}",
            imagenet.to_json()
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            err(json!({"preset": "imagenet", "crop": {"mode": "center", "height": 0, "width": 3}}))
                .field,
            "crop.height"
        );
        assert_eq!(
            err(json!({"preset": "imagenet", "filter": "box"})).field,
            "filter"
        );
        assert_eq!(err(json!({"preset": "nope"})).field, "preset");
        assert_eq!(
            err(json!({"preset": "imagenet", "colour": "rgb"})).field,
            "colour"
        );
        assert_eq!(
            err(json!({"resize": {"mode": "shorter_side", "size": 256}})).field,
            "crop"
        );
        assert_eq!(
            err(json!({"preset": "imagenet", "dtype": "uint8"})).field,
            "normalize"
        );
        assert_eq!(
            err(json!({"preset": "imagenet", "color": "gray"})).field,
            "normalize.mean"
        );
        assert_eq!(err(json!({"preset": "imagenet", "crop": {"mode": "center", "height": 300, "width": 224}})).field, "crop.height");
        assert_eq!(err(json!({"preset": "imagenet", "resize": {"mode": "exact", "height": 99999, "width": 3}})).field, "resize.height");
        assert_eq!(
            err(json!({"preset": "imagenet", "normalize": {"mean": [0, 0, 0], "std": [1, 0, 1]}}))
                .field,
            "normalize.std"
        );
        assert_eq!(err(json!([1, 2])).field, "spec");
        let e = TransformSpec::from_json(b"{not json").unwrap_err();
        assert_eq!(e.field, "spec");
        assert!(e.to_string().starts_with("spec: not valid JSON"));
    }

    #[test]
    fn exact_resize_needs_no_crop() {
        let spec = TransformSpec::from_value(&json!({
            "resize": {"mode": "exact", "height": 32, "width": 48}, "dtype": "uint8"
        }))
        .unwrap();
        assert_eq!(spec.output_size(), (32, 48));
        assert_eq!(spec.shape(), [3, 32, 48]);
        assert_eq!(spec.row_bytes(), 3 * 32 * 48);
    }
}
