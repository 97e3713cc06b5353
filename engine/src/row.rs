//! One row, start to finish: sniff → header + limits → decode (at a draft
//! scale when the spec asks and the resize allows) → gray →
//! orient → plan (random draws) → source crop → resize → tensor, with every intermediate in reused
//! thread-local buffers and any panic contained.
//!
//! Order of checks, cheapest first, so hostile input costs as little as
//! possible: null/empty/size, magic bytes, then the format's own header
//! walk (no pixel memory), the pixel and aspect-ratio limits, the size the
//! resize step would need, and only then the decoder.
//!
//! Colour handling: grayscale sources stay one channel through orient and
//! resize and are broadcast to RGB when the tensor is written (identical to
//! Pillow's `convert('RGB')` then resize, since every channel is resized
//! with the same weights). RGB sources asked for `gray` are converted with
//! Pillow's `convert('L')` arithmetic *before* resizing, as Pillow would.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use fast_image_resize::Resizer;
use pixelfeed_schema::{Color, Filter, TransformSpec};

use crate::error::{format_mpx, format_number, RowError};
use crate::exif::orientation_from_metadata;
use crate::formats::Opened;
use crate::geometry::{self, Mapping, Plan, Rect};
use crate::orient::Orientation;
use crate::sniff::{first_bytes_hex, sniff, Sniffed};
use crate::write::TensorWriter;
use crate::{color, jpeg, png, resize, EngineConfig, RowStages};

/// Thread-local buffers larger than this are released after the row that
/// grew them, so one huge image does not pin its memory in every worker.
const KEEP_SCRATCH_BYTES: usize = 64 << 20;

/// What one row produced besides its tensor bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RowOutcome {
    /// `(height, width)` after orientation, when the header was readable.
    pub dims: Option<(u32, u32)>,
    /// Why the row has no tensor; `None` for a good row.
    pub error: Option<RowError>,
    /// Why a good row's pixels may be imperfect (decoded with recovery).
    pub warning: Option<String>,
    /// Where the output came from; `None` for a failed row.
    pub geometry: Option<Geometry>,
    /// Time spent in each stage the row reached.
    pub stages: RowStages,
}

/// A good row's geometry: the `geometry` output column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    /// EXIF orientation applied (1 = none).
    pub orientation: u8,
    /// The output was mirrored left-right.
    pub flipped_horizontal: bool,
    /// The output was mirrored top-bottom.
    pub flipped_vertical: bool,
    /// The output window in oriented source coordinates.
    pub mapping: Mapping,
}

/// What `run` learns about a row on the way, kept even when it fails later.
#[derive(Default)]
struct Progress {
    dims: Option<(u32, u32)>,
    warning: Option<String>,
    geometry: Option<Geometry>,
    stages: RowStages,
}

/// Everything a row needs that is the same for the whole batch.
pub(crate) struct RowContext<'a> {
    spec: &'a TransformSpec,
    config: &'a EngineConfig,
    writer: TensorWriter,
    /// Largest side a decoder is allowed to see, derived from the limits:
    /// the longest side any image within both limits can have.
    max_side: usize,
}

impl<'a> RowContext<'a> {
    /// Precomputes the per-batch parts of the pipeline.
    pub(crate) fn new(spec: &'a TransformSpec, config: &'a EngineConfig) -> Self {
        // w*h <= P and w/h <= A imply w <= sqrt(P*A).
        let side = (config.max_pixels as f64 * config.max_aspect_ratio.max(1.0))
            .sqrt()
            .ceil();
        let max_side = if side.is_finite() {
            side.clamp(1.0, f64::from(u32::MAX)) as usize
        } else {
            u32::MAX as usize
        };
        Self {
            spec,
            config,
            writer: TensorWriter::new(spec),
            max_side,
        }
    }
}

/// Reused per-thread buffers.
#[derive(Default)]
struct Scratch {
    /// The cleaned-up encoded stream handed to the decoder.
    encoded: Vec<u8>,
    /// Decoded pixels (1 or 3 channels).
    decoded: Vec<u8>,
    /// RGB converted to luma for gray output.
    gray: Vec<u8>,
    /// The oriented image.
    oriented: Vec<u8>,
    /// The part of the resized image the output window shows.
    resized: Vec<u8>,
    /// The horizontal pass of a two-pass resize.
    half_resized: Vec<u8>,
    /// The source region a random resized crop picked.
    region: Vec<u8>,
    /// One output row being gathered (padding, flips, channel order).
    row: Vec<u8>,
    resizer: Resizer,
}

impl Scratch {
    /// Drops buffers that grew past [`KEEP_SCRATCH_BYTES`].
    fn trim(&mut self) {
        for buf in [
            &mut self.encoded,
            &mut self.decoded,
            &mut self.gray,
            &mut self.oriented,
            &mut self.resized,
            &mut self.half_resized,
            &mut self.region,
            &mut self.row,
        ] {
            if buf.capacity() > KEEP_SCRATCH_BYTES {
                *buf = Vec::new();
            }
        }
        if self.resizer.size_of_internal_buffers() > KEEP_SCRATCH_BYTES {
            self.resizer.reset_internal_buffers();
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs the pipeline for one image, writing its tensor into `slot` (zeroed
/// when the row fails). `key` keys the row's random draws. Never panics
/// and never fails the batch.
pub(crate) fn process_row(
    image: Option<&[u8]>,
    key: u64,
    ctx: &RowContext<'_>,
    slot: &mut [u8],
) -> RowOutcome {
    let mut progress = Progress::default();
    let result = catch_unwind(AssertUnwindSafe(|| {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                let r = run(image, key, ctx, slot, &mut scratch, &mut progress);
                scratch.trim();
                r
            }
            // Only reachable if a row ever ran inside another on the same
            // thread; correctness over reuse then.
            Err(_) => run(
                image,
                key,
                ctx,
                slot,
                &mut Scratch::default(),
                &mut progress,
            ),
        })
    }));
    let error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(payload) => {
            // The scratch may be half-written; start the thread afresh.
            SCRATCH.with(|cell| {
                if let Ok(mut s) = cell.try_borrow_mut() {
                    *s = Scratch::default();
                }
            });
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_string());
            Some(RowError::Panic(msg))
        }
    };
    if error.is_some() {
        slot.fill(0);
        progress.geometry = None;
        progress.warning = None;
    }
    RowOutcome {
        dims: progress.dims,
        error,
        warning: progress.warning,
        geometry: progress.geometry,
        stages: progress.stages,
    }
}

/// Tests compare cropped decodes with whole ones through this switch
/// (cropping changes how much is decoded, never the output).
#[cfg(test)]
pub(crate) static DECODE_WHOLE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn decode_whole() -> bool {
    #[cfg(test)]
    return DECODE_WHOLE.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(test))]
    false
}

/// Refuses images whose header size breaks the configured limits.
fn check_limits(width: u32, height: u32, config: &EngineConfig) -> Result<(), RowError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > config.max_pixels {
        return Err(RowError::TooManyPixels {
            width,
            height,
            mpx: format_mpx(pixels),
            limit: format_mpx(config.max_pixels),
        });
    }
    let (long, short) = (width.max(height), width.min(height).max(1));
    let ratio = f64::from(long) / f64::from(short);
    if ratio > config.max_aspect_ratio {
        return Err(RowError::AspectRatio {
            width,
            height,
            ratio: format_number(ratio),
            limit: format_number(config.max_aspect_ratio),
        });
    }
    Ok(())
}

/// The orientation to apply, from the raw EXIF/XMP value (metadata is
/// read, and its size limit checked, only when the spec asks for it).
fn orientation(
    spec: &TransformSpec,
    raw: impl FnOnce() -> Result<Option<u16>, RowError>,
) -> Result<Orientation, RowError> {
    if !spec.exif_orientation {
        return Ok(Orientation::Normal);
    }
    Ok(raw()?.map_or(Orientation::Normal, Orientation::from_exif))
}

/// Grows `buf` to at least `len` bytes and returns exactly `len` of them.
fn sized(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

fn run(
    image: Option<&[u8]>,
    key: u64,
    ctx: &RowContext<'_>,
    slot: &mut [u8],
    s: &mut Scratch,
    progress: &mut Progress,
) -> Result<(), RowError> {
    let started = Instant::now();
    let data = image.ok_or(RowError::Null)?;
    if data.is_empty() {
        return Err(RowError::Empty);
    }
    if data.len() > ctx.config.max_encoded_bytes {
        return Err(RowError::TooManyBytes {
            size: data.len(),
            limit: ctx.config.max_encoded_bytes,
        });
    }
    let strict = ctx.spec.strict;
    // The draft scale the image was decoded at (1: full size).
    let mut draft = 1;
    let (width, height, view, channels, orient, plan) = match sniff(data) {
        Sniffed::Jpeg => {
            let header = jpeg::parse_header(data, &mut s.encoded)?;
            let limit = ctx.config.max_metadata_bytes;
            let orient = orientation(ctx.spec, || {
                orientation_from_metadata(header.exif, header.xmp, limit)
            })?;
            progress.dims = Some(orient.oriented_size(header.height, header.width));
            check_limits(header.width, header.height, ctx.config)?;
            let plan = checked_plan(ctx, orient.oriented_size(header.height, header.width), key)?;
            let facts = jpeg::finish_stream(data, &header, &mut s.encoded, strict)?;
            // A draft may decode at 1/2, 1/4 or 1/8, as Pillow's `draft`
            // does for the resized size; the plan is then made again for
            // the drafted size (the geometry a Pillow user gets by resizing
            // the drafted image).
            let scale = if ctx.spec.draft {
                geometry::draft_scale(&plan)
            } else {
                1
            };
            let (width, height) = jpeg::scaled_size(header.width, header.height, scale);
            let plan = if scale > 1 {
                checked_plan(ctx, orient.oriented_size(height, width), key)?
            } else {
                plan
            };
            // Only the pixels the output depends on are decoded (libjpeg-
            // turbo skips the IDCT and colour conversion of the others).
            let needed = resize::source_needed(&plan, orient.oriented_size(height, width));
            let region = if decode_whole() {
                Rect {
                    top: 0,
                    left: 0,
                    height,
                    width,
                }
            } else {
                orient.stored_rect(needed, height, width)
            };
            // RGBX when a convolution resize follows: its four-byte kernels
            // are faster than the three-byte ones by more than the extra
            // byte costs the decoder.
            let rgbx = ctx.spec.color != Color::Gray
                && ctx.spec.filter != Filter::Nearest
                && plan.resized != (plan.source.height, plan.source.width);
            let d = jpeg::decode(
                &s.encoded,
                &header,
                &facts,
                jpeg::Request {
                    decoder: ctx.spec.decoder,
                    scale,
                    region,
                    strict,
                    rgbx,
                    max_side: ctx.max_side,
                },
                &mut s.decoded,
            )?;
            draft = scale;
            progress.warning = match (d.warning, facts.warning) {
                (Some(decode), Some(stream)) => Some(format!("{decode}; {stream}")),
                (decode, stream) => decode.or(stream),
            };
            (width, height, d.region, d.channels, orient, plan)
        }
        Sniffed::Png => {
            let header = png::parse_header(data)?;
            progress.dims = Some((header.height, header.width));
            check_limits(header.width, header.height, ctx.config)?;
            let meta = png::filter_chunks(data, &mut s.encoded)?;
            let orient = orientation(ctx.spec, || meta.orientation(ctx.config.max_metadata_bytes))?;
            progress.dims = Some(orient.oriented_size(header.height, header.width));
            let plan = checked_plan(ctx, orient.oriented_size(header.height, header.width), key)?;
            let channels = png::decode(&s.encoded, &header, ctx.max_side, &mut s.decoded)?;
            let whole = Rect {
                top: 0,
                left: 0,
                height: header.height,
                width: header.width,
            };
            (header.width, header.height, whole, channels, orient, plan)
        }
        format @ (Sniffed::WebP | Sniffed::Gif | Sniffed::Bmp | Sniffed::Tiff) => {
            let opened = Opened::open(format, data).ok_or_else(|| {
                RowError::Internal(format!("{format:?} has no whole-image decoder"))
            })??;
            let (width, height) = opened.size();
            progress.dims = Some((height, width));
            check_limits(width, height, ctx.config)?;
            let raw = || opened.orientation(ctx.config.max_metadata_bytes);
            let orient = if opened.orientation_is_layout() {
                raw()?.map_or(Orientation::Normal, Orientation::from_exif)
            } else {
                orientation(ctx.spec, raw)?
            };
            progress.dims = Some(orient.oriented_size(height, width));
            let plan = checked_plan(ctx, orient.oriented_size(height, width), key)?;
            let channels = opened.decode(data, &mut s.decoded)?;
            let whole = Rect {
                top: 0,
                left: 0,
                height,
                width,
            };
            (width, height, whole, channels, orient, plan)
        }
        Sniffed::Unsupported(name) => return Err(RowError::UnsupportedFormat(name)),
        Sniffed::Unknown => {
            let hex = ctx.config.quote_input_bytes.then(|| first_bytes_hex(data));
            return Err(RowError::UnknownFormat(hex));
        }
    };
    let decoded = Instant::now();
    progress.stages.decode = Some(decoded - started);
    let resized_at = transform(s, ctx, (width, height), view, channels, orient, &plan, slot)?;
    progress.stages.resize = Some(resized_at - decoded);
    progress.stages.convert = Some(resized_at.elapsed());
    progress.geometry = Some(Geometry {
        orientation: orient.exif_value(),
        flipped_horizontal: plan.flip_horizontal,
        flipped_vertical: plan.flip_vertical,
        mapping: plan.mapping().undrafted(draft),
    });
    Ok(())
}

/// The row's plan, refusing a spec/image pair whose resized intermediate
/// would be larger than both the pixel limit and the output itself (only
/// reachable with a very large aspect-ratio limit).
fn checked_plan(
    ctx: &RowContext<'_>,
    (height, width): (u32, u32),
    key: u64,
) -> Result<Plan, RowError> {
    let plan = geometry::plan(ctx.spec, height, width, key);
    let (rh, rw) = plan.resized;
    let (oh, ow) = ctx.spec.output_size();
    let cap = ctx.config.max_pixels.max(u64::from(oh) * u64::from(ow));
    if u64::from(rh) * u64::from(rw) > cap {
        return Err(RowError::ResizedTooLarge {
            width,
            height,
            resized_w: rw,
            resized_h: rh,
            limit: format_mpx(cap),
        });
    }
    Ok(plan)
}

/// Gray conversion, orientation, source crop, resize and the tensor write,
/// from the decoded pixels in `s.decoded`. Returns when the resize ended
/// (the tensor write began), for the stage times.
#[allow(clippy::too_many_arguments)]
fn transform(
    s: &mut Scratch,
    ctx: &RowContext<'_>,
    (width, height): (u32, u32),
    stored_view: Rect,
    mut channels: usize,
    orient: Orientation,
    plan: &Plan,
    slot: &mut [u8],
) -> Result<Instant, RowError> {
    let Scratch {
        decoded,
        gray,
        oriented,
        resized,
        half_resized,
        region,
        row,
        resizer,
        ..
    } = s;
    // The decoded pixels are the `stored_view` rectangle of the (stored)
    // image: all of it, or what the output needs (a cropped decode).
    let (w, h) = (stored_view.width as usize, stored_view.height as usize);
    let mut pixels: &[u8] = &decoded[..w * h * channels];

    if ctx.spec.color == Color::Gray && channels == 3 {
        let out = sized(gray, w * h);
        color::rgb_to_luma(pixels, out);
        pixels = out;
        channels = 1;
    }

    let (oh, ow) = orient.oriented_size(height, width);
    if orient != Orientation::Normal {
        let out = sized(oriented, pixels.len());
        orient.apply(pixels, w, h, channels, out);
        pixels = out;
    }
    // Where those pixels are in the oriented image.
    let mut view = orient.oriented_rect(stored_view, height, width);

    let src = plan.source;
    if (src.height, src.width) != (oh, ow) {
        // A random resized crop's region, cut out exactly: the resize
        // clamps at its edges, as torchvision's crop-then-resize does.
        let (top, left) = (
            (src.top - view.top) as usize,
            (src.left - view.left) as usize,
        );
        let line = src.width as usize * channels;
        let out = sized(region, src.height as usize * line);
        for (y, dst) in out.chunks_exact_mut(line).enumerate() {
            let start = ((top + y) * view.width as usize + left) * channels;
            dst.copy_from_slice(&pixels[start..start + line]);
        }
        pixels = out;
        view = Rect {
            top: 0,
            left: 0,
            ..src
        };
    }

    let (rh, rw) = plan.resized;
    let (source, plan) = if (rh, rw) == (src.height, src.width) {
        // No resize: the writer reads the window out of the view.
        let plan = plan.relative_to(view);
        (pixels, plan)
    } else {
        // Only the part of the resized image that the output window shows
        // is computed (the crop fused into the resize).
        let part = plan.visible();
        let out = sized(
            resized,
            part.height as usize * part.width as usize * channels,
        );
        resize::resize(
            resizer,
            pixels,
            (src.width, src.height),
            view,
            channels,
            out,
            (rw, rh),
            part,
            ctx.spec.filter,
            half_resized,
        )?;
        (&*out, plan.relative_to(part))
    };
    let resized_at = Instant::now();
    let (height, width) = plan.resized;
    ctx.writer.write(
        source,
        (width as usize, height as usize),
        channels,
        &plan,
        slot,
        row,
    )?;
    Ok(resized_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_in_order() {
        let config = EngineConfig::default();
        assert!(check_limits(8_000, 8_000, &config).is_ok());
        assert!(check_limits(10_000, 10_000, &config).is_err());
        assert_eq!(
            check_limits(65500, 65500, &config).unwrap_err().to_string(),
            "image is 65500x65500 = 4290 Mpx, over the 64 Mpx limit"
        );
        assert_eq!(
            check_limits(65000, 1, &config).unwrap_err().to_string(),
            "image is 65000x1, aspect ratio 65000 over the limit 100"
        );
        assert!(check_limits(1, 100, &config).is_ok());
        assert!(check_limits(1, 101, &config).is_err());
    }

    #[test]
    fn decoder_side_limit_follows_the_config() {
        let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
        let config = EngineConfig::default();
        // sqrt(64 Mpx x aspect 100): the longest side any accepted image has.
        assert_eq!(RowContext::new(&spec, &config).max_side, 80_000);
        let odd = EngineConfig {
            max_aspect_ratio: f64::INFINITY,
            ..EngineConfig::default()
        };
        assert_eq!(RowContext::new(&spec, &odd).max_side, u32::MAX as usize);
    }
}
