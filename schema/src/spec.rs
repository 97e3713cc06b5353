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
    /// Scale so the longer side equals `size`, keeping the aspect ratio; the
    /// shorter side becomes `int(size * short / long)`, as torchvision's
    /// `Resize(size=None, max_size=size)`.
    LongerSide {
        /// Target length of the longer side.
        size: u32,
    },
    /// Scale to exactly `height` × `width`, ignoring the aspect ratio.
    Exact {
        /// Output height in pixels.
        height: u32,
        /// Output width in pixels.
        width: u32,
    },
    /// Letterbox: scale to the largest size that keeps the aspect ratio and
    /// fits inside `height` × `width` (the limiting side exactly, the other
    /// `round(side * scale)`, at least 1), then pad to `height` × `width`
    /// with `pad_value`, the image centred (extra pixel of an odd margin on
    /// the bottom/right).
    Fit {
        /// Output height in pixels.
        height: u32,
        /// Output width in pixels.
        width: u32,
        /// Pixel value (0–255, before dtype conversion and normalisation)
        /// of the padding, per output channel (gray uses the first).
        pad_value: [u8; 3],
    },
    /// No scaling: the oriented source goes to the crop as it is, so the
    /// spec needs a crop to fix the output size.
    None,
}

/// How the (resized) image is cut down to the output size. Windows that
/// reach past the image's edges read zeros there, as torchvision's `crop` and
/// `center_crop` pad.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crop {
    /// A `height` × `width` window centred as torchvision's `center_crop`
    /// places it: offsets `int(round((H - h) / 2))`, `int(round((W - w) / 2))`;
    /// a side longer than the image is padded, the image at `(h - H) // 2`.
    Center {
        /// Crop height in pixels.
        height: u32,
        /// Crop width in pixels.
        width: u32,
    },
    /// An explicit window of the resized image, as torchvision's
    /// `crop(img, top, left, height, width)`.
    Box {
        /// First row of the window (may be negative: padding above).
        top: i32,
        /// First column of the window (may be negative: padding left).
        left: i32,
        /// Window height in pixels.
        height: u32,
        /// Window width in pixels.
        width: u32,
    },
    /// torchvision's `RandomResizedCrop`: a random region of the oriented
    /// source, whose area is a `scale` fraction of the image and whose aspect
    /// ratio (width / height) is log-uniform in `ratio`, resized to
    /// `height` × `width`; after 10 failed draws, torchvision's central
    /// fallback. Replaces the resize step (`resize.mode` must be `none`).
    /// Draws come from the spec's `seed` and the row (see
    /// [`TransformSpec::seed`]).
    RandomResized {
        /// Output height in pixels.
        height: u32,
        /// Output width in pixels.
        width: u32,
        /// Range of the region's area as a fraction of the image's, within (0, 1].
        scale: (f64, f64),
        /// Range of the region's aspect ratio (width / height), positive.
        ratio: (f64, f64),
    },
}

impl Crop {
    /// The window's `(height, width)`, which is the output size.
    pub fn size(&self) -> (u32, u32) {
        match *self {
            Crop::Center { height, width }
            | Crop::Box { height, width, .. }
            | Crop::RandomResized { height, width, .. } => (height, width),
        }
    }
}

/// Random flips of the output, each drawn per row (see [`TransformSpec::seed`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flip {
    /// Probability of a left-right mirror, in [0, 1].
    pub horizontal_p: f64,
    /// Probability of an upside-down mirror, in [0, 1].
    pub vertical_p: f64,
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
    /// Three channels in OpenCV / Caffe order, B, G, R.
    Bgr,
    /// One luminance channel (ITU-R 601 weights, as Pillow's `convert('L')`).
    Gray,
}

/// Element type of the output tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE 754 single precision; pixel/255, then normalised if asked.
    Float32,
    /// IEEE 754 half precision (Arrow `HalfFloat`): the float32 value
    /// rounded to nearest-even, as torch's `.half()`.
    Float16,
    /// bfloat16, carried as `uint16` storage (Arrow has no bfloat16 type)
    /// with the tensor field marked `pixelfeed.dtype: bfloat16`: the float32
    /// value rounded to nearest-even, as torch's `.bfloat16()`.
    BFloat16,
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
    /// Random flips of the output; `None` for none.
    pub flip: Option<Flip>,
    /// Seed of every random draw (random crops, flips). A row's draws depend
    /// only on the seed and the row's key: its value in an integer `seed`
    /// input column when there is one, else its position in the stream
    /// (first row 0), so a request gives the same pixels on any server and
    /// for any batching.
    pub seed: u64,
    /// When true, JPEG files that decode only with recovery (truncated,
    /// corrupt entropy data, missing EOI, restart markers out of sequence)
    /// are error rows; when false (default) they are decoded as far as
    /// possible and the row carries a `warning`.
    pub strict: bool,
    /// When true, JPEGs are decoded as Pillow does after
    /// `draft('RGB', resized size)`: by libjpeg-turbo, straight at 1/2, 1/4
    /// or 1/8 scale in the DCT domain when the resize shrinks the image at
    /// least that much in both directions (the largest such reduction), at
    /// full size otherwise. Several times faster for large photos; the
    /// pixels are Pillow's with that draft, not those of a full decode.
    /// PNGs and CMYK JPEGs are decoded as without it. Needs a server built
    /// with the `turbojpeg` feature. Default false.
    pub draft: bool,
}

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

    /// Number of output channels (3 for RGB, 1 for gray).
    pub fn channels(&self) -> usize {
        color_channels(self.color)
    }

    /// Output image height and width in pixels (after resize and crop).
    pub fn output_size(&self) -> (u32, u32) {
        match (self.crop, self.resize) {
            (Some(crop), _) => crop.size(),
            (None, Resize::Exact { height, width } | Resize::Fit { height, width, .. }) => {
                (height, width)
            }
            // Unreachable for a validated spec: `check_output_is_fixed`
            // rejects the other resize modes without a crop.
            (None, Resize::ShorterSide { size } | Resize::LongerSide { size }) => (size, size),
            (None, Resize::None) => (1, 1),
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
            DType::Float16 | DType::BFloat16 => 2,
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
        })
    }

    /// Whether any step draws random numbers (random crops, flips).
    pub fn is_random(&self) -> bool {
        self.flip.is_some() || matches!(self.crop, Some(Crop::RandomResized { .. }))
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

fn color_channels(color: Color) -> usize {
    match color {
        Color::Rgb | Color::Bgr => 3,
        Color::Gray => 1,
    }
}

fn resize_mode_name(resize: &Resize) -> &'static str {
    match resize {
        Resize::ShorterSide { .. } => "shorter_side",
        Resize::LongerSide { .. } => "longer_side",
        Resize::Exact { .. } => "exact",
        Resize::Fit { .. } => "fit",
        Resize::None => "none",
    }
}

impl DType {
    /// The spec's name for this dtype (`"float32"`, `"bfloat16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float16 => "float16",
            DType::BFloat16 => "bfloat16",
            DType::UInt8 => "uint8",
        }
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
        // Found by the `spec` fuzz target: 7.7e120 is a finite f64 but an
        // infinite f32, so the spec was accepted and its canonical form
        // (`"mean":[null]`) was not.
        let huge =
            br#"{"preset":"imagenet","color":"gray","normalize":{"mean":[7.7e120],"std":[0.25]}}"#;
        assert_eq!(
            TransformSpec::from_json(huge).unwrap_err().field,
            "normalize.mean"
        );
        // Finite values whose outputs overflow float32.
        let tiny_std = json!({"preset": "imagenet", "color": "gray", "normalize": {"mean": [0.5], "std": [1e-39]}});
        assert_eq!(err(tiny_std).field, "normalize");
        let far_mean = json!({"preset": "imagenet", "color": "gray", "normalize": {"mean": [3e38], "std": [0.1]}});
        assert_eq!(err(far_mean).field, "normalize");
        assert_eq!(err(json!([1, 2])).field, "spec");
        let e = TransformSpec::from_json(b"{not json").unwrap_err();
        assert_eq!(e.field, "spec");
        assert!(e.to_string().starts_with("spec: not valid JSON"));
    }

    #[test]
    fn every_preset_parses_and_round_trips() {
        for name in PRESET_NAMES {
            let spec = TransformSpec::from_value(&json!({ "preset": name }))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                TransformSpec::from_value(&spec.to_value()).unwrap(),
                spec,
                "{name}"
            );
        }
        let clip = TransformSpec::from_json(br#"{"preset":"clip"}"#).unwrap();
        assert_eq!(clip.filter, Filter::Bicubic);
        assert_eq!(clip.normalize.unwrap().mean[0], 0.481_454_66);
        let raw = TransformSpec::from_json(br#"{"preset":"raw_u8"}"#).unwrap();
        assert_eq!(
            (raw.dtype, raw.layout, raw.normalize),
            (DType::UInt8, Layout::Hwc, None)
        );
        let train = TransformSpec::from_json(br#"{"preset":"imagenet_train"}"#).unwrap();
        assert!(train.is_random());
        assert_eq!(train.output_size(), (224, 224));
    }

    #[test]
    fn new_modes_parse_and_round_trip() {
        let cases = [
            json!({"resize": {"mode": "longer_side", "size": 300}, "crop": {"mode": "center", "height": 200, "width": 300}}),
            json!({"resize": {"mode": "fit", "height": 64, "width": 80, "pad_value": [114, 114, 114]}, "dtype": "float16"}),
            json!({"resize": {"mode": "fit", "height": 64, "width": 80, "pad_value": 3}, "color": "gray", "normalize": null}),
            json!({"resize": {"mode": "fit", "height": 64, "width": 80, "pad_value": [1, 2, 3]}, "color": "gray"}),
            json!({"resize": {"mode": "none"}, "crop": {"mode": "box", "top": -4, "left": 10, "height": 32, "width": 16}, "color": "bgr", "dtype": "bfloat16"}),
            json!({"crop": {"mode": "center", "height": 10, "width": 10}, "flip": {"vertical_p": 0.25}, "seed": 18446744073709551615u64, "strict": true}),
            json!({"preset": "imagenet", "draft": true}),
            json!({"crop": {"mode": "random_resized_crop", "height": 8, "width": 8, "scale": [0.5, 1], "ratio": [1, 2]}}),
        ];
        for v in cases {
            let spec = TransformSpec::from_value(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(
                TransformSpec::from_value(&spec.to_value()).unwrap(),
                spec,
                "{v}"
            );
        }
        let fit = TransformSpec::from_value(
            &json!({"resize": {"mode": "fit", "height": 64, "width": 80, "pad_value": 3}}),
        )
        .unwrap();
        assert_eq!(
            fit.resize,
            Resize::Fit {
                height: 64,
                width: 80,
                pad_value: [3, 3, 3]
            }
        );
        assert_eq!(fit.shape(), [3, 64, 80]);
        let half =
            TransformSpec::from_value(&json!({"preset": "imagenet", "dtype": "bfloat16"})).unwrap();
        assert_eq!(half.row_bytes(), 3 * 224 * 224 * 2);
        assert!(!half.strict);
    }

    #[test]
    fn new_fields_name_their_errors() {
        let field = |v: Value| err(v).field;
        assert_eq!(field(json!({})), "crop");
        assert_eq!(
            field(json!({"resize": {"mode": "longer_side", "size": 10}})),
            "crop"
        );
        assert_eq!(field(json!({"resize": {"mode": "huge"}})), "resize.mode");
        assert_eq!(
            field(json!({"resize": {"mode": "fit", "height": 4, "width": 4, "pad_value": 256}})),
            "resize.pad_value"
        );
        assert_eq!(
            field(json!({"resize": {"mode": "fit", "height": 4, "width": 4, "pad_value": [1, 2]}})),
            "resize.pad_value"
        );
        assert_eq!(
            field(
                json!({"preset": "imagenet", "crop": {"mode": "random_resized_crop", "height": 4, "width": 4}})
            ),
            "resize.mode"
        );
        assert_eq!(
            field(
                json!({"crop": {"mode": "random_resized_crop", "height": 4, "width": 4, "scale": [0, 1]}})
            ),
            "crop.scale"
        );
        assert_eq!(
            field(
                json!({"crop": {"mode": "random_resized_crop", "height": 4, "width": 4, "scale": [0.9, 0.5]}})
            ),
            "crop.scale"
        );
        assert_eq!(
            field(
                json!({"crop": {"mode": "random_resized_crop", "height": 4, "width": 4, "ratio": [-1, 1]}})
            ),
            "crop.ratio"
        );
        assert_eq!(
            field(json!({"crop": {"mode": "box", "top": 0, "height": 4, "width": 4}})),
            "crop.left"
        );
        assert_eq!(
            field(json!({"preset": "imagenet", "flip": {"horizontal_p": 1.5}})),
            "flip.horizontal_p"
        );
        assert_eq!(
            field(json!({"preset": "imagenet", "flip": {"diagonal_p": 0.5}})),
            "flip.diagonal_p"
        );
        assert_eq!(field(json!({"preset": "imagenet", "seed": -1})), "seed");
        assert_eq!(
            field(json!({"preset": "imagenet", "strict": "yes"})),
            "strict"
        );
        assert_eq!(field(json!({"preset": "imagenet", "draft": 1})), "draft");
        assert_eq!(
            field(json!({"preset": "imagenet", "dtype": "float64"})),
            "dtype"
        );
        assert_eq!(
            field(json!({"preset": "imagenet", "color": "rgba"})),
            "color"
        );
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
