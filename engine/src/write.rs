//! Writing one row's tensor into its slot of the output block, in one pass
//! per output row: window (with padding and flips), channel order and
//! broadcast, dtype, normalisation and layout at once.

use half::{bf16, f16};
use pixelfeed_schema::{Color, DType, Layout, TransformSpec};

use crate::error::RowError;
use crate::geometry::Plan;

/// How a pixel byte becomes an output element.
#[derive(Debug, Clone)]
enum Values {
    /// The byte itself.
    Bytes,
    /// Per output channel, the float32 value of each byte.
    Float32(Vec<[f32; 256]>),
    /// Per output channel, the float16/bfloat16 bits of each byte.
    Half(Vec<[u16; 256]>),
}

/// Precomputed per-spec writer; shared by every row of a batch.
#[derive(Debug, Clone)]
pub(crate) struct TensorWriter {
    channels: usize,
    layout: Layout,
    /// Source channel of each output channel (BGR reverses RGB).
    channel_map: [usize; 3],
    values: Values,
}

/// Per output channel, `(v / 255 - mean) / std` (or `v / 255` without
/// normalisation) for every byte `v`, computed in f32 as torchvision's
/// `ToTensor` + `Normalize` do.
fn float_luts(spec: &TransformSpec) -> Vec<[f32; 256]> {
    (0..spec.channels())
        .map(|c| {
            let mut lut = [0f32; 256];
            for (v, slot) in lut.iter_mut().enumerate() {
                let x = v as f32 / 255.0;
                *slot = match &spec.normalize {
                    Some(n) => (x - n.mean[c]) / n.std[c],
                    None => x,
                };
            }
            lut
        })
        .collect()
}

impl TensorWriter {
    /// A writer for `spec`'s channels, dtype, layout and normalisation.
    pub(crate) fn new(spec: &TransformSpec) -> Self {
        let halves = |to_bits: fn(f32) -> u16| {
            Values::Half(
                float_luts(spec)
                    .iter()
                    .map(|lut| lut.map(to_bits))
                    .collect(),
            )
        };
        let values = match spec.dtype {
            DType::UInt8 => Values::Bytes,
            DType::Float32 => Values::Float32(float_luts(spec)),
            // Both conversions round to nearest-even, as torch's do.
            DType::Float16 => halves(|x| f16::from_f32(x).to_bits()),
            DType::BFloat16 => halves(|x| bf16::from_f32(x).to_bits()),
        };
        Self {
            channels: spec.channels(),
            layout: spec.layout,
            channel_map: match spec.color {
                Color::Bgr => [2, 1, 0],
                Color::Rgb | Color::Gray => [0, 1, 2],
            },
            values,
        }
    }

    /// Writes `plan`'s window of `src` (an image `src_width` × `src_height`
    /// with `src_channels` interleaved bytes per pixel) into `out`, one
    /// row's slot, padding and flipping as the plan says. A 1-channel source
    /// fills every output channel (gray to RGB, which is what Pillow's
    /// `convert('RGB')` of an L image does); a 4-channel source is RGBX
    /// (the fourth byte ignored). `row` is scratch space.
    ///
    /// Multi-byte values are stored native-endian, as Arrow's in-memory
    /// buffers are (little-endian on every platform this runs on).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write(
        &self,
        src: &[u8],
        (src_width, src_height): (usize, usize),
        src_channels: usize,
        plan: &Plan,
        out: &mut [u8],
        row: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        let window = plan.window;
        let (h, w, c_out) = (window.height as usize, window.width as usize, self.channels);
        let elem = match self.values {
            Values::Bytes => 1,
            Values::Half(_) => 2,
            Values::Float32(_) => 4,
        };
        let rgbx = src_channels == 4 && c_out == 3;
        if src_channels != 1 && src_channels != c_out && !rgbx {
            return Err(RowError::Internal(format!(
                "cannot write {src_channels}-channel pixels as {c_out} channels"
            )));
        }
        if out.len() != h * w * c_out * elem || src.len() < src_width * src_height * src_channels {
            return Err(RowError::Internal(
                "tensor slot or source has the wrong size".into(),
            ));
        }
        // Index of output channel c in a source pixel.
        let pick = |c: usize| {
            if src_channels == 1 {
                0
            } else {
                self.channel_map[c]
            }
        };
        let straight = (src_channels == c_out || rgbx)
            && (0..c_out).all(|c| pick(c) == c)
            && !plan.flip_horizontal
            && window.left >= 0
            && window.left + w as i64 <= src_width as i64;
        for y in 0..h {
            let dy = if plan.flip_vertical { h - 1 - y } else { y };
            let sy = window.top + dy as i64;
            let source_row = (0..src_height as i64).contains(&sy).then(|| {
                let start = sy as usize * src_width * src_channels;
                &src[start..start + src_width * src_channels]
            });
            let pixels: &[u8] = match source_row {
                Some(line) if straight => {
                    let left = window.left as usize * src_channels;
                    &line[left..left + w * src_channels]
                }
                _ => {
                    row.clear();
                    for x in 0..w {
                        let dx = if plan.flip_horizontal { w - 1 - x } else { x };
                        let sx = window.left + dx as i64;
                        match source_row.filter(|_| (0..src_width as i64).contains(&sx)) {
                            Some(line) => {
                                let px = &line[sx as usize * src_channels..];
                                row.extend((0..c_out).map(|c| px[pick(c)]));
                            }
                            None => row.extend_from_slice(&plan.pad[..c_out]),
                        }
                    }
                    row
                }
            };
            // Gathered rows are packed; straight ones keep the source's pixel stride.
            let stride = if source_row.is_some() && straight {
                src_channels
            } else {
                c_out
            };
            let at = RowAt {
                y,
                h,
                w,
                c: c_out,
                stride,
            };
            match &self.values {
                Values::Bytes => at.put(pixels, self.layout, out, |_, v| [v]),
                Values::Float32(luts) => at.put(pixels, self.layout, out, |c, v| {
                    luts[c][usize::from(v)].to_ne_bytes()
                }),
                Values::Half(luts) => at.put(pixels, self.layout, out, |c, v| {
                    luts[c][usize::from(v)].to_ne_bytes()
                }),
            }
        }
        Ok(())
    }
}

/// Output row `y` of an `h` × `w` × `c` tensor, read from pixels `stride`
/// bytes apart (`c`, or 4 for RGBX).
struct RowAt {
    y: usize,
    h: usize,
    w: usize,
    c: usize,
    stride: usize,
}

impl RowAt {
    /// Stores the row's pixels (`w` pixels `stride` bytes apart, the first
    /// `c` of each used) as `E`-byte elements, `value(channel, byte)` each,
    /// in `layout` order.
    #[inline]
    fn put<const E: usize>(
        &self,
        pixels: &[u8],
        layout: Layout,
        out: &mut [u8],
        value: impl Fn(usize, u8) -> [u8; E],
    ) {
        let RowAt { y, h, w, c, stride } = *self;
        match layout {
            Layout::Hwc => {
                let dst = &mut out[y * w * c * E..(y + 1) * w * c * E];
                if E == 1 && stride == c {
                    // Only `Values::Bytes` has 1-byte elements, and its
                    // value is the byte itself: one copy.
                    dst.copy_from_slice(pixels);
                    return;
                }
                for (out_px, px) in dst.chunks_exact_mut(E * c).zip(pixels.chunks_exact(stride)) {
                    for (ch, (d, &v)) in out_px.chunks_exact_mut(E).zip(px).enumerate() {
                        d.copy_from_slice(&value(ch, v));
                    }
                }
            }
            Layout::Chw => {
                for ch in 0..c {
                    let start = ((ch * h + y) * w) * E;
                    let dst = &mut out[start..start + w * E];
                    for (d, px) in dst.chunks_exact_mut(E).zip(pixels.chunks_exact(stride)) {
                        d.copy_from_slice(&value(ch, px[ch]));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{Rect, Window};
    use serde_json::json;

    fn spec(v: serde_json::Value) -> TransformSpec {
        TransformSpec::from_value(&v).unwrap()
    }

    /// A 3x2 RGB source whose pixel (x, y) is [10y+x, 100+10y+x, 200+10y+x].
    fn source() -> Vec<u8> {
        let mut v = Vec::new();
        for y in 0..2u8 {
            for x in 0..3u8 {
                v.extend_from_slice(&[10 * y + x, 100 + 10 * y + x, 200 + 10 * y + x]);
            }
        }
        v
    }

    fn plan(window: Window) -> Plan {
        Plan {
            source: Rect {
                top: 0,
                left: 0,
                height: 2,
                width: 3,
            },
            resized: (2, 3),
            window,
            pad: [7, 8, 9],
            flip_horizontal: false,
            flip_vertical: false,
        }
    }

    const WINDOW: Window = Window {
        top: 0,
        left: 1,
        height: 2,
        width: 2,
    };

    fn exact(dtype: &str, layout: &str, color: &str) -> TransformSpec {
        spec(json!({
            "resize": {"mode": "exact", "height": 2, "width": 2},
            "dtype": dtype, "layout": layout, "color": color
        }))
    }

    fn write(w: &TensorWriter, src: &[u8], channels: usize, p: &Plan, out: &mut [u8]) {
        w.write(src, (3, 2), channels, p, out, &mut Vec::new())
            .unwrap();
    }

    fn floats(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn uint8_hwc_copies_the_window() {
        let w = TensorWriter::new(&exact("uint8", "hwc", "rgb"));
        let mut out = vec![0; 12];
        write(&w, &source(), 3, &plan(WINDOW), &mut out);
        assert_eq!(out, [1, 101, 201, 2, 102, 202, 11, 111, 211, 12, 112, 212]);
    }

    #[test]
    fn uint8_chw_splits_planes() {
        let w = TensorWriter::new(&exact("uint8", "chw", "rgb"));
        let mut out = vec![0; 12];
        write(&w, &source(), 3, &plan(WINDOW), &mut out);
        assert_eq!(out, [1, 2, 11, 12, 101, 102, 111, 112, 201, 202, 211, 212]);
    }

    #[test]
    fn bgr_reverses_the_channels() {
        let w = TensorWriter::new(&exact("uint8", "hwc", "bgr"));
        let mut out = vec![0; 12];
        write(&w, &source(), 3, &plan(WINDOW), &mut out);
        assert_eq!(out, [201, 101, 1, 202, 102, 2, 211, 111, 11, 212, 112, 12]);
    }

    #[test]
    fn flips_mirror_the_output() {
        let w = TensorWriter::new(&exact("uint8", "hwc", "rgb"));
        let mut out = vec![0; 12];
        let p = Plan {
            flip_horizontal: true,
            ..plan(WINDOW)
        };
        write(&w, &source(), 3, &p, &mut out);
        assert_eq!(out, [2, 102, 202, 1, 101, 201, 12, 112, 212, 11, 111, 211]);
        let p = Plan {
            flip_vertical: true,
            ..plan(WINDOW)
        };
        write(&w, &source(), 3, &p, &mut out);
        assert_eq!(out, [11, 111, 211, 12, 112, 212, 1, 101, 201, 2, 102, 202]);
    }

    #[test]
    fn outside_the_source_is_padding() {
        let w = TensorWriter::new(&exact("uint8", "hwc", "rgb"));
        let mut out = vec![0; 12];
        let p = plan(Window {
            top: -1,
            left: 2,
            height: 2,
            width: 2,
        });
        write(&w, &source(), 3, &p, &mut out);
        assert_eq!(out, [7, 8, 9, 7, 8, 9, 2, 102, 202, 7, 8, 9]);
        // Gray output pads with the first value.
        let w = TensorWriter::new(&exact("uint8", "hwc", "gray"));
        let mut out = vec![0; 4];
        write(&w, &[0, 1, 2, 10, 11, 12], 1, &p, &mut out);
        assert_eq!(out, [7, 7, 2, 7]);
    }

    #[test]
    fn gray_source_broadcasts_to_rgb() {
        let gray = [0u8, 1, 2, 10, 11, 12];
        let w = TensorWriter::new(&exact("uint8", "hwc", "rgb"));
        let mut out = vec![0; 12];
        write(&w, &gray, 1, &plan(WINDOW), &mut out);
        assert_eq!(out, [1, 1, 1, 2, 2, 2, 11, 11, 11, 12, 12, 12]);
        let w = TensorWriter::new(&exact("uint8", "chw", "gray"));
        let mut out = vec![0; 4];
        write(&w, &gray, 1, &plan(WINDOW), &mut out);
        assert_eq!(out, [1, 2, 11, 12]);
    }

    #[test]
    fn float_lut_scales_and_normalises() {
        let w = TensorWriter::new(&exact("float32", "chw", "rgb"));
        let mut out = vec![0; 48];
        write(&w, &source(), 3, &plan(WINDOW), &mut out);
        let f = floats(&out);
        assert_eq!(f[0], 1.0 / 255.0);
        assert_eq!(f[4], 101.0 / 255.0);
        assert_eq!(f[11], 212.0 / 255.0);

        let s = spec(json!({
            "preset": "imagenet",
            "resize": {"mode": "exact", "height": 2, "width": 2}, "crop": null, "layout": "hwc"
        }));
        let w = TensorWriter::new(&s);
        write(&w, &source(), 3, &plan(WINDOW), &mut out);
        let f = floats(&out);
        let expect = |v: u8, mean: f32, std: f32| (v as f32 / 255.0 - mean) / std;
        assert_eq!(f[0], expect(1, 0.485, 0.229));
        assert_eq!(f[1], expect(101, 0.456, 0.224));
        assert_eq!(f[2], expect(201, 0.406, 0.225));
        assert_eq!(f[11], expect(212, 0.406, 0.225));
    }

    #[test]
    fn half_types_round_the_float_values() {
        let s = |dtype: &str| {
            spec(json!({
                "preset": "imagenet", "dtype": dtype,
                "resize": {"mode": "exact", "height": 2, "width": 2}, "crop": null
            }))
        };
        let expect = |v: u8| (v as f32 / 255.0 - 0.485) / 0.229;
        for (dtype, to_f32) in [
            (
                "float16",
                (|b| f16::from_bits(b).to_f32()) as fn(u16) -> f32,
            ),
            ("bfloat16", |b| bf16::from_bits(b).to_f32()),
        ] {
            let w = TensorWriter::new(&s(dtype));
            let mut out = vec![0; 24];
            write(&w, &source(), 3, &plan(WINDOW), &mut out);
            let first = to_f32(u16::from_ne_bytes([out[0], out[1]]));
            let want = expect(1);
            // float16 keeps 11 significant bits, bfloat16 8.
            let tol = if dtype == "float16" { 1e-3 } else { 1e-2 };
            assert!(
                (first - want).abs() <= want.abs() * tol,
                "{dtype}: {first} vs {want}"
            );
            let again = match dtype {
                "float16" => f16::from_f32(want).to_bits(),
                _ => bf16::from_f32(want).to_bits(),
            };
            assert_eq!(u16::from_ne_bytes([out[0], out[1]]), again);
        }
    }

    #[test]
    fn refuses_a_source_shorter_than_it_claims() {
        let w = TensorWriter::new(&exact("uint8", "hwc", "rgb"));
        let mut out = vec![0; 12];
        let short = &source()[..10];
        assert!(w
            .write(short, (3, 2), 3, &plan(WINDOW), &mut out, &mut Vec::new())
            .is_err());
    }

    #[test]
    fn rgbx_sources_write_what_rgb_sources_write() {
        let rgbx: Vec<u8> = source()
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 0xEE])
            .collect();
        let windows = [
            WINDOW,
            // Reaching past the image: padding on two sides.
            Window {
                top: -1,
                left: -1,
                height: 4,
                width: 5,
            },
        ];
        for (dtype, elem) in [("uint8", 1), ("float32", 4), ("float16", 2)] {
            for layout in ["hwc", "chw"] {
                for color in ["rgb", "bgr"] {
                    let w = TensorWriter::new(&exact(dtype, layout, color));
                    for window in windows {
                        for (fh, fv) in [(false, false), (true, false), (false, true)] {
                            let p = Plan {
                                flip_horizontal: fh,
                                flip_vertical: fv,
                                ..plan(window)
                            };
                            let len = window.height as usize * window.width as usize * 3 * elem;
                            let (mut a, mut b) = (vec![0; len], vec![1; len]);
                            write(&w, &source(), 3, &p, &mut a);
                            write(&w, &rgbx, 4, &p, &mut b);
                            assert_eq!(a, b, "{dtype} {layout} {color} {window:?} {fh} {fv}");
                        }
                    }
                }
            }
        }
    }
}
