//! The transform spec: what the client asks the server to do with each image.
//!
//! A spec arrives as JSON (the `DoExchange` descriptor's command bytes). It is
//! parsed from a [`serde_json::Value`] by hand rather than with serde derive so
//! that every rejection names the offending field (`crop.height: must be ...`),
//! which is what a user debugging a training script needs to see.
//!
//! - this file: the types and what follows from them (shape, sizes);
//! - [`parse`](self::parse): JSON → [`TransformSpec`], every rejection a [`SpecError`];
//! - [`canonical`](self::canonical): [`TransformSpec`] → the resolved JSON
//!   (must round-trip through `parse`);
//! - [`preset`](self::preset): the named presets.

mod canonical;
mod parse;
mod preset;
#[cfg(test)]
mod tests;

pub use preset::{preset, PRESET_NAMES};

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
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
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

/// The JPEG decoder a spec asks for (spec field `decoder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegDecoder {
    /// libjpeg-turbo when the server was built with it, else zune-jpeg.
    Auto,
    /// libjpeg-turbo 3 (the decoder of Pillow's wheels: the same pixels).
    LibjpegTurbo,
    /// zune-jpeg (pure Rust): the fallback for builds without a C
    /// toolchain; layouts it decodes wrongly are refused by name.
    ZuneJpeg,
}

impl JpegDecoder {
    /// The spec's name for it: `auto`, `libjpeg-turbo`, `zune-jpeg`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::LibjpegTurbo => "libjpeg-turbo",
            Self::ZuneJpeg => "zune-jpeg",
        }
    }
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
    /// When true, JPEGs may be decoded at a reduced scale, as Pillow does
    /// after `draft('RGB', resized size)`: straight at 1/2, 1/4 or 1/8 scale
    /// in the DCT domain when the resize shrinks the image at least that much
    /// in both directions (the largest such reduction), at full size
    /// otherwise. Several times faster for large photos; the pixels are
    /// Pillow's with that draft, not those of a full decode. Only
    /// libjpeg-turbo decodes at a reduced scale, so `draft` with
    /// [`JpegDecoder::ZuneJpeg`] is refused. PNGs are decoded as without it.
    /// Default false.
    pub draft: bool,
    /// Which JPEG decoder runs. [`JpegDecoder::Auto`] (the default) is
    /// libjpeg-turbo when the server has it, else zune-jpeg; servers
    /// resolve it before answering, so the spec in an output schema or a
    /// ticket always names the decoder that ran.
    pub decoder: JpegDecoder,
}

impl TransformSpec {
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

    /// Whether any step draws random numbers (random crops, flips).
    pub fn is_random(&self) -> bool {
        self.flip.is_some() || matches!(self.crop, Some(Crop::RandomResized { .. }))
    }
}

fn color_channels(color: Color) -> usize {
    match color {
        Color::Rgb | Color::Bgr => 3,
        Color::Gray => 1,
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
