//! Writing one row's tensor into its slot of the output block, in one pass:
//! crop window, channel broadcast, dtype, normalisation and layout at once.

use pixelfeed_schema::{DType, Layout, TransformSpec};

use super::error::RowError;
use super::geometry::Window;

/// Precomputed per-spec writer; shared by every row of a batch.
#[derive(Debug, Clone)]
pub(crate) struct TensorWriter {
    channels: usize,
    layout: Layout,
    /// For float32 output: per output channel, the value of each byte,
    /// `(v / 255 - mean) / std` (or `v / 255` without normalisation),
    /// computed in f32 as torchvision's `ToTensor` + `Normalize` do.
    luts: Option<Vec<[f32; 256]>>,
}

impl TensorWriter {
    /// A writer for `spec`'s channels, dtype, layout and normalisation.
    pub(crate) fn new(spec: &TransformSpec) -> Self {
        let channels = spec.channels();
        let luts = match spec.dtype {
            DType::UInt8 => None,
            DType::Float32 => Some(
                (0..channels)
                    .map(|c| {
                        let (mean, std) = match &spec.normalize {
                            Some(n) => (n.mean[c], n.std[c]),
                            None => (0.0, 1.0),
                        };
                        let mut lut = [0f32; 256];
                        for (v, slot) in lut.iter_mut().enumerate() {
                            let x = v as f32 / 255.0;
                            *slot = if spec.normalize.is_some() {
                                (x - mean) / std
                            } else {
                                x
                            };
                        }
                        lut
                    })
                    .collect(),
            ),
        };
        Self {
            channels,
            layout: spec.layout,
            luts,
        }
    }

    /// Writes `window` of `src` (an image `src_width` pixels wide with
    /// `src_channels` interleaved bytes per pixel) into `out`, one row's
    /// slot. A 1-channel source fills every output channel (gray to RGB,
    /// which is what Pillow's `convert('RGB')` of an L image does).
    ///
    /// Float32 values are stored native-endian, as Arrow's in-memory
    /// buffers are (little-endian on every platform this runs on).
    pub(crate) fn write(
        &self,
        src: &[u8],
        src_width: usize,
        src_channels: usize,
        window: Window,
        out: &mut [u8],
    ) -> Result<(), RowError> {
        let (h, w, c_out) = (window.height as usize, window.width as usize, self.channels);
        let (top, left) = (window.top as usize, window.left as usize);
        let elem = if self.luts.is_some() { 4 } else { 1 };
        if src_channels != 1 && src_channels != c_out {
            return Err(RowError::Internal(format!(
                "cannot write {src_channels}-channel pixels as {c_out} channels"
            )));
        }
        if out.len() != h * w * c_out * elem
            || left + w > src_width
            || (top + h) * src_width * src_channels > src.len()
        {
            return Err(RowError::Internal(
                "tensor window does not fit its source or slot".into(),
            ));
        }
        // Index of output channel c in a source pixel.
        let pick = |c: usize| if src_channels == 1 { 0 } else { c };
        for y in 0..h {
            let start = ((top + y) * src_width + left) * src_channels;
            let row = &src[start..start + w * src_channels];
            match (&self.luts, self.layout) {
                (None, Layout::Hwc) => {
                    let dst = &mut out[y * w * c_out..(y + 1) * w * c_out];
                    if src_channels == c_out {
                        dst.copy_from_slice(row);
                    } else {
                        for (px, &v) in dst.chunks_exact_mut(c_out).zip(row) {
                            px.fill(v);
                        }
                    }
                }
                (None, Layout::Chw) => {
                    for c in 0..c_out {
                        let plane_row = (c * h + y) * w;
                        let dst = &mut out[plane_row..plane_row + w];
                        for (x, d) in dst.iter_mut().enumerate() {
                            *d = row[x * src_channels + pick(c)];
                        }
                    }
                }
                (Some(luts), Layout::Hwc) => {
                    let dst = &mut out[y * w * c_out * 4..(y + 1) * w * c_out * 4];
                    for (x, px) in dst.chunks_exact_mut(c_out * 4).enumerate() {
                        for (c, d) in px.chunks_exact_mut(4).enumerate() {
                            let v = row[x * src_channels + pick(c)];
                            d.copy_from_slice(&luts[c][usize::from(v)].to_ne_bytes());
                        }
                    }
                }
                (Some(luts), Layout::Chw) => {
                    for (c, lut) in luts.iter().enumerate() {
                        let plane_row = ((c * h + y) * w) * 4;
                        let dst = &mut out[plane_row..plane_row + w * 4];
                        for (x, d) in dst.chunks_exact_mut(4).enumerate() {
                            let v = row[x * src_channels + pick(c)];
                            d.copy_from_slice(&lut[usize::from(v)].to_ne_bytes());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn floats(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn uint8_hwc_copies_the_window() {
        let w = TensorWriter::new(&exact("uint8", "hwc", "rgb"));
        let mut out = vec![0; 12];
        w.write(&source(), 3, 3, WINDOW, &mut out).unwrap();
        assert_eq!(out, [1, 101, 201, 2, 102, 202, 11, 111, 211, 12, 112, 212]);
    }

    #[test]
    fn uint8_chw_splits_planes() {
        let w = TensorWriter::new(&exact("uint8", "chw", "rgb"));
        let mut out = vec![0; 12];
        w.write(&source(), 3, 3, WINDOW, &mut out).unwrap();
        assert_eq!(out, [1, 2, 11, 12, 101, 102, 111, 112, 201, 202, 211, 212]);
    }

    #[test]
    fn gray_source_broadcasts_to_rgb() {
        let gray = [0u8, 1, 2, 10, 11, 12];
        let w = TensorWriter::new(&exact("uint8", "hwc", "rgb"));
        let mut out = vec![0; 12];
        w.write(&gray, 3, 1, WINDOW, &mut out).unwrap();
        assert_eq!(out, [1, 1, 1, 2, 2, 2, 11, 11, 11, 12, 12, 12]);
        let w = TensorWriter::new(&exact("uint8", "chw", "gray"));
        let mut out = vec![0; 4];
        w.write(&gray, 3, 1, WINDOW, &mut out).unwrap();
        assert_eq!(out, [1, 2, 11, 12]);
    }

    #[test]
    fn float_lut_scales_and_normalises() {
        let w = TensorWriter::new(&exact("float32", "chw", "rgb"));
        let mut out = vec![0; 48];
        w.write(&source(), 3, 3, WINDOW, &mut out).unwrap();
        let f = floats(&out);
        assert_eq!(f[0], 1.0 / 255.0);
        assert_eq!(f[4], 101.0 / 255.0);
        assert_eq!(f[11], 212.0 / 255.0);

        let s = spec(json!({
            "preset": "imagenet",
            "resize": {"mode": "exact", "height": 2, "width": 2}, "crop": null, "layout": "hwc"
        }));
        let w = TensorWriter::new(&s);
        w.write(&source(), 3, 3, WINDOW, &mut out).unwrap();
        let f = floats(&out);
        let expect = |v: u8, mean: f32, std: f32| (v as f32 / 255.0 - mean) / std;
        assert_eq!(f[0], expect(1, 0.485, 0.229));
        assert_eq!(f[1], expect(101, 0.456, 0.224));
        assert_eq!(f[2], expect(201, 0.406, 0.225));
        assert_eq!(f[11], expect(212, 0.406, 0.225));
    }

    #[test]
    fn refuses_a_window_outside_the_source() {
        let w = TensorWriter::new(&exact("uint8", "hwc", "rgb"));
        let mut out = vec![0; 12];
        let bad = Window { top: 1, ..WINDOW };
        assert!(w.write(&source(), 3, 3, bad, &mut out).is_err());
    }
}
