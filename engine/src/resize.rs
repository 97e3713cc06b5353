//! Resampling with fast_image_resize, whose convolution filters reproduce
//! Pillow's antialiased `Image.resize` (support widened by the downscale
//! factor, same kernels, 8-bit fixed-point arithmetic).
//!
//! One difference is undone here: for 8-bit images fast_image_resize runs
//! the vertical pass first (it is faster), while Pillow runs the horizontal
//! pass first. The intermediate image is clipped to 0–255, so with filters
//! that have negative lobes (bicubic, Lanczos) the order changes the
//! result near hard edges (up to ~36 levels on a 1-bit image). When both
//! dimensions change, the resize is therefore done as two single-axis
//! resizes in Pillow's order, horizontal into a scratch image, then
//! vertical. What remains is fast_image_resize's 15-bit (vs Pillow's
//! 22-bit) coefficient precision: an occasional ±1.
//!
//! Nearest neighbour is done here, not by fast_image_resize: Pillow picks
//! source pixel `int(x0)` where `x0` starts at `scale / 2` and *accumulates*
//! `+= scale` per output pixel (`ImagingScaleAffine`), and the float drift
//! of that sum picks a different neighbour than `int((x + 0.5) * scale)`
//! for some rows and columns (thousands of pixels on a 384×303 → 324×256
//! resize). Replicating the accumulation gives Pillow's pixels exactly.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use pixelfeed_schema::Filter;

use crate::error::RowError;
use crate::geometry::{Plan, Rect};

/// The fast_image_resize algorithm matching a spec filter.
pub(crate) fn algorithm(filter: Filter) -> ResizeAlg {
    match filter {
        // Unused by `resize` (see `nearest`), kept so the mapping is total.
        Filter::Nearest => ResizeAlg::Nearest,
        Filter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        Filter::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
        Filter::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
    }
}

/// The widest filter support we use (Lanczos3: 3 source pixels each side
/// at scale 1), for the rows a partial resize must read.
const MAX_FILTER_SUPPORT: f64 = 3.0;

/// Source pixels on each side of a footprint that a resize by `scale`
/// (source pixels per output pixel) may read: the widest filter's support,
/// widened by the downscale factor as Pillow widens it, plus one.
fn reach(scale: f64) -> f64 {
    MAX_FILTER_SUPPORT * scale.max(1.0) + 1.0
}

/// The pixels of a `height` × `width` (oriented) source that `plan`'s
/// output depends on: its whole `source` region when that is a crop (a
/// random resized crop: the resize clamps at the region's edges), else the
/// footprint of the visible part widened by the filter's reach on each
/// resized axis (the visible part itself on an axis kept at its size).
/// Decoding only this rectangle gives the same output.
pub(crate) fn source_needed(plan: &Plan, (height, width): (u32, u32)) -> Rect {
    let src = plan.source;
    if (src.height, src.width) != (height, width) {
        return src;
    }
    let part = plan.visible();
    let (rh, rw) = plan.resized;
    let axis = |start: u32, len: u32, src_len: u32, dst_len: u32| {
        if src_len == dst_len || len == 0 {
            return (start, len);
        }
        let scale = f64::from(src_len) / f64::from(dst_len);
        let lo = (f64::from(start) * scale - reach(scale)).floor().max(0.0) as u32;
        let hi = (f64::from(start + len) * scale + reach(scale))
            .ceil()
            .min(f64::from(src_len)) as u32;
        (lo, hi.max(lo) - lo)
    };
    let (top, rows) = axis(part.top, part.height, height, rh);
    let (left, columns) = axis(part.left, part.width, width, rw);
    Rect {
        top,
        left,
        height: rows,
        width: columns,
    }
}

/// Resizes a `src_w` × `src_h` source (1, 3 or 4 (RGBX) interleaved
/// channels) to `full` = (`dst_w`, `dst_h`), computing only the `part` of
/// that output (a rectangle inside it) into `dst` (`part.width` ×
/// `part.height`, same channels, exactly sized). `src` holds only the
/// source's rectangle `view`, which must contain [`source_needed`] of the
/// part. `tmp` holds the horizontally resized intermediate when both sides
/// change.
///
/// Only computing the part is how a crop is fused into the resize: the
/// filter weights of each output pixel depend on its position in the full
/// output, and source pixels outside the part's footprint still contribute
/// (as in Pillow's `resize(box=...)`), so the part equals the same window
/// of a full resize, up to float rounding of the sample positions.
#[allow(clippy::too_many_arguments)]
pub(crate) fn resize(
    resizer: &mut Resizer,
    src: &[u8],
    (src_w, src_h): (u32, u32),
    view: Rect,
    channels: usize,
    dst: &mut [u8],
    (dst_w, dst_h): (u32, u32),
    part: Rect,
    filter: Filter,
    tmp: &mut Vec<u8>,
) -> Result<(), RowError> {
    let pixel_type = match channels {
        1 => PixelType::U8,
        3 => PixelType::U8x3,
        // RGBX: fast_image_resize's four-byte kernels are its fastest (the
        // three-byte horizontal pass was a sixth of a row's time).
        4 => PixelType::U8x4,
        n => return Err(RowError::Internal(format!("cannot resize {n} channels"))),
    };
    if part.width == 0 || part.height == 0 {
        return Ok(());
    }
    if filter == Filter::Nearest {
        nearest(
            src,
            (src_w, src_h),
            view,
            channels,
            dst,
            (dst_w, dst_h),
            part,
        );
        return Ok(());
    }
    let scale_x = f64::from(src_w) / f64::from(dst_w);
    let scale_y = f64::from(src_h) / f64::from(dst_h);
    // The part's footprint in the source, per axis (exact where that axis
    // is not resized, so fast_image_resize skips its pass).
    let (left, width) = if src_w == dst_w {
        (f64::from(part.left), f64::from(part.width))
    } else {
        (
            f64::from(part.left) * scale_x,
            f64::from(part.width) * scale_x,
        )
    };
    let (top, height) = if src_h == dst_h {
        (f64::from(part.top), f64::from(part.height))
    } else {
        (
            f64::from(part.top) * scale_y,
            f64::from(part.height) * scale_y,
        )
    };
    // `part` lies inside the output, so its footprint lies inside the
    // source; clamp away the last ulp of the products, which
    // fast_image_resize would refuse as out of bounds.
    let width = width.min(f64::from(src_w) - left);
    let height = height.min(f64::from(src_h) - top);
    // In the coordinates of the view `src` holds.
    let (view_left, view_top) = (f64::from(view.left), f64::from(view.top));
    let src_box = (left - view_left, top - view_top, width, height);
    let two_pass = src_w != dst_w && src_h != dst_h;
    if !two_pass {
        return resize_once(
            resizer,
            src,
            (view.width, view.height),
            src_box,
            dst,
            (part.width, part.height),
            pixel_type,
            filter,
        );
    }
    // Pillow's order: horizontal pass first, over the source rows the
    // vertical pass will read (its filter footprint plus a row of margin,
    // so its weights are never clipped anywhere but at the image's edges).
    let reach = reach(scale_y);
    let first_row = ((top - reach).floor().max(0.0) as u32).max(view.top);
    let end_row = ((top + height + reach).ceil().min(f64::from(src_h)) as u32)
        .min(view.top + view.height)
        .max(first_row + 1);
    let rows = end_row - first_row;
    let len = part.width as usize * rows as usize * channels;
    if tmp.len() < len {
        tmp.resize(len, 0);
    }
    let mid = &mut tmp[..len];
    resize_once(
        resizer,
        src,
        (view.width, view.height),
        (
            left - view_left,
            f64::from(first_row - view.top),
            width,
            f64::from(rows),
        ),
        mid,
        (part.width, rows),
        pixel_type,
        filter,
    )?;
    resize_once(
        resizer,
        mid,
        (part.width, rows),
        (
            0.0,
            top - f64::from(first_row),
            f64::from(part.width),
            height,
        ),
        dst,
        (part.width, part.height),
        pixel_type,
        filter,
    )
}

/// Pillow's `ImagingScaleAffine` source index sequence for `n_out`
/// samples of an axis `n_in` long: `int(acc)` with `acc` starting at
/// `scale / 2` and growing by `scale`, clamped to the axis.
fn nearest_axis(n_in: u32, n_out: u32) -> impl Iterator<Item = usize> {
    let scale = f64::from(n_in) / f64::from(n_out);
    let last = n_in.saturating_sub(1) as usize;
    let mut acc = scale * 0.5;
    (0..n_out).map(move |_| {
        let i = (acc.max(0.0) as usize).min(last);
        acc += scale;
        i
    })
}

fn nearest(
    src: &[u8],
    (src_w, src_h): (u32, u32),
    view: Rect,
    channels: usize,
    dst: &mut [u8],
    (dst_w, dst_h): (u32, u32),
    part: Rect,
) {
    let src_stride = view.width as usize * channels;
    let dst_stride = part.width as usize * channels;
    let rows = nearest_axis(src_h, dst_h)
        .skip(part.top as usize)
        .take(part.height as usize);
    for (sy, out_row) in rows.zip(dst.chunks_exact_mut(dst_stride)) {
        let sy = sy - view.top as usize;
        let in_row = &src[sy * src_stride..(sy + 1) * src_stride];
        let columns = nearest_axis(src_w, dst_w)
            .skip(part.left as usize)
            .take(part.width as usize)
            .map(|sx| sx - view.left as usize);
        for (sx, px) in columns.zip(out_row.chunks_exact_mut(channels)) {
            px.copy_from_slice(&in_row[sx * channels..(sx + 1) * channels]);
        }
    }
}

/// One fast_image_resize call: the `(left, top, width, height)` box of
/// `src` to all of `dst`.
#[allow(clippy::too_many_arguments)]
fn resize_once(
    resizer: &mut Resizer,
    src: &[u8],
    (src_w, src_h): (u32, u32),
    (left, top, width, height): (f64, f64, f64, f64),
    dst: &mut [u8],
    (dst_w, dst_h): (u32, u32),
    pixel_type: PixelType,
    filter: Filter,
) -> Result<(), RowError> {
    let fail = |e: &dyn std::fmt::Display| RowError::Resize(e.to_string());
    let src_image = ImageRef::new(src_w, src_h, src, pixel_type).map_err(|e| fail(&e))?;
    let mut dst_image =
        Image::from_slice_u8(dst_w, dst_h, dst, pixel_type).map_err(|e| fail(&e))?;
    // A fourth channel is X, not alpha: never premultiply.
    let options = ResizeOptions::new()
        .resize_alg(algorithm(filter))
        .use_alpha(false)
        .crop(left, top, width, height);
    resizer
        .resize(&src_image, &mut dst_image, &options)
        .map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole of a `w` × `h` output.
    fn whole(w: u32, h: u32) -> Rect {
        Rect {
            top: 0,
            left: 0,
            height: h,
            width: w,
        }
    }

    /// A deterministic noisy image with hard edges (what makes clipping and
    /// pass order visible).
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 7 == 0 {
                    255
                } else {
                    (x >> 56) as u8
                }
            })
            .collect()
    }

    #[test]
    fn parts_reaching_the_far_edges_never_leave_the_source() {
        // Footprints computed as offset * scale can overshoot the source by
        // an ulp; fast_image_resize refuses such a box.
        let mut resizer = Resizer::new();
        let sizes = [3u32, 7, 77, 93, 128, 224, 333, 341];
        for &(sw, sh) in &[(93u32, 77u32), (128, 128), (333, 7), (7, 341)] {
            let src = noise((sw * sh * 3) as usize);
            for &dw in &sizes {
                for &dh in &sizes {
                    for (left, top) in [(dw / 3, dh / 3), (dw - 1, dh - 1), (0, 0)] {
                        let part = Rect {
                            top,
                            left,
                            height: dh - top,
                            width: dw - left,
                        };
                        let mut out = vec![0; (part.width * part.height * 3) as usize];
                        resize(
                            &mut resizer,
                            &src,
                            (sw, sh),
                            whole(sw, sh),
                            3,
                            &mut out,
                            (dw, dh),
                            part,
                            Filter::Bilinear,
                            &mut Vec::new(),
                        )
                        .unwrap_or_else(|e| panic!("{sw}x{sh}->{dw}x{dh} {part:?}: {e}"));
                    }
                }
            }
        }
    }

    #[test]
    fn a_part_equals_that_window_of_the_full_resize() {
        let mut resizer = Resizer::new();
        let mut tmp = Vec::new();
        // (source, full output): both axes, one axis, upscales, and the
        // imagenet case (500x375 -> 341x256, centre 224).
        let cases = [
            ((500, 375), (341, 256)),
            ((97, 61), (40, 61)),
            ((97, 61), (97, 20)),
            ((31, 17), (77, 50)),
            ((64, 64), (16, 48)),
        ];
        for channels in [1usize, 3] {
            for filter in [
                Filter::Nearest,
                Filter::Bilinear,
                Filter::Bicubic,
                Filter::Lanczos3,
            ] {
                for ((sw, sh), (dw, dh)) in cases {
                    let src = noise((sw * sh) as usize * channels);
                    let mut full = vec![0; (dw * dh) as usize * channels];
                    resize(
                        &mut resizer,
                        &src,
                        (sw, sh),
                        whole(sw, sh),
                        channels,
                        &mut full,
                        (dw, dh),
                        whole(dw, dh),
                        filter,
                        &mut tmp,
                    )
                    .unwrap();
                    let parts = [
                        Rect {
                            top: (dh - dh * 7 / 8) / 2,
                            left: (dw - dw * 2 / 3) / 2,
                            height: dh * 7 / 8,
                            width: dw * 2 / 3,
                        },
                        Rect {
                            top: 0,
                            left: 0,
                            height: 1,
                            width: dw,
                        },
                        Rect {
                            top: dh - 3,
                            left: dw - 5,
                            height: 3,
                            width: 5,
                        },
                        Rect {
                            top: dh / 2,
                            left: 0,
                            height: 1,
                            width: 1,
                        },
                    ];
                    for part in parts {
                        let mut got = vec![0; (part.width * part.height) as usize * channels];
                        resize(
                            &mut resizer,
                            &src,
                            (sw, sh),
                            whole(sw, sh),
                            channels,
                            &mut got,
                            (dw, dh),
                            part,
                            filter,
                            &mut tmp,
                        )
                        .unwrap();
                        let line = part.width as usize * channels;
                        for y in 0..part.height as usize {
                            let start = ((part.top as usize + y) * dw as usize
                                + part.left as usize)
                                * channels;
                            let want = &full[start..start + line];
                            let row = &got[y * line..(y + 1) * line];
                            let worst = want.iter().zip(row).map(|(a, b)| a.abs_diff(*b)).max();
                            assert!(
                                worst <= Some(1),
                                "{filter:?} {channels}ch {sw}x{sh}->{dw}x{dh} {part:?} row {y}: \
                                 off by {worst:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bilinear_downscale_is_antialiased_like_pillow() {
        // Pillow: Image.frombytes('L', (4, 1), bytes([0, 100, 200, 250]))
        //   .resize((2, 1), Image.BILINEAR) -> [71, 207]: the triangle's
        // support doubles when halving, so three source pixels contribute.
        let mut resizer = Resizer::new();
        let mut dst = [0u8; 2];
        resize(
            &mut resizer,
            &[0, 100, 200, 250],
            (4, 1),
            whole(4, 1),
            1,
            &mut dst,
            (2, 1),
            whole(2, 1),
            Filter::Bilinear,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(dst, [71, 207]);
    }

    #[test]
    fn horizontal_pass_runs_first_as_in_pillow() {
        // Hard 0/255 edges downscaled with Lanczos overshoot; Pillow clips
        // after the horizontal pass, then resizes vertically. Expected from
        // Pillow 13: Image.frombytes('L', (6, 6), bytes(SRC))
        //   .resize((3, 3), Image.LANCZOS).tobytes()
        // (vertical-first gives [191, 196, 164, 12, 130, 227, 151, 44, 116]).
        const SRC: [u8; 36] = [
            255, 255, 255, 0, 0, 255, 0, 255, 255, 255, 255, 255, 0, 0, 0, 255, 255, 0, 255, 0, 0,
            255, 255, 255, 0, 0, 0, 0, 0, 255, 255, 255, 255, 0, 0, 255,
        ];
        const PILLOW_LANCZOS_6_TO_3: [u8; 9] = [181, 188, 167, 28, 130, 215, 136, 51, 122];
        let src = SRC;
        let mut dst = [0u8; 9];
        resize(
            &mut Resizer::new(),
            &src,
            (6, 6),
            whole(6, 6),
            1,
            &mut dst,
            (3, 3),
            whole(3, 3),
            Filter::Lanczos3,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(dst, PILLOW_LANCZOS_6_TO_3);
    }

    #[test]
    fn nearest_accumulates_like_pillow() {
        // Pillow 13, 384 columns -> 324: the accumulated position picks
        // these source columns for outputs 40..45; int((x + 0.5) * scale)
        // would pick 48 at x = 40.
        let cols: Vec<usize> = nearest_axis(384, 324).collect();
        assert_eq!(&cols[40..45], [47, 49, 50, 51, 52]);
        let src: Vec<u8> = (0..12).collect();
        let mut dst = [0u8; 8];
        resize(
            &mut Resizer::new(),
            &src,
            (4, 3),
            whole(4, 3),
            1,
            &mut dst,
            (2, 4),
            whole(2, 4),
            Filter::Nearest,
            &mut Vec::new(),
        )
        .unwrap();
        // Image.frombytes('L', (4, 3), bytes(range(12))).resize((2, 4), NEAREST)
        assert_eq!(dst, [1, 3, 5, 7, 5, 7, 9, 11]);
    }

    #[test]
    fn same_size_is_a_copy() {
        let mut resizer = Resizer::new();
        let src = [1u8, 2, 3, 4, 5, 6];
        let mut dst = [0u8; 6];
        resize(
            &mut resizer,
            &src,
            (2, 1),
            whole(2, 1),
            3,
            &mut dst,
            (2, 1),
            whole(2, 1),
            Filter::Lanczos3,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(dst, src);
    }

    #[test]
    fn rgbx_resizes_like_rgb() {
        // The fourth byte is X, never alpha: the RGB bytes of an RGBX resize
        // are those of the RGB resize (no premultiplication by it).
        let (w, h) = (37u32, 23u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let rgbx: Vec<u8> = rgb
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 0])
            .collect();
        let mut resizer = Resizer::new();
        for filter in [
            Filter::Bilinear,
            Filter::Bicubic,
            Filter::Lanczos3,
            Filter::Nearest,
        ] {
            let (dw, dh) = (16u32, 9u32);
            let part = Rect {
                top: 1,
                left: 2,
                height: 7,
                width: 11,
            };
            let mut a = vec![0; 7 * 11 * 3];
            let mut b = vec![0; 7 * 11 * 4];
            let mut tmp = Vec::new();
            resize(
                &mut resizer,
                &rgb,
                (w, h),
                whole(w, h),
                3,
                &mut a,
                (dw, dh),
                part,
                filter,
                &mut tmp,
            )
            .unwrap();
            resize(
                &mut resizer,
                &rgbx,
                (w, h),
                whole(w, h),
                4,
                &mut b,
                (dw, dh),
                part,
                filter,
                &mut tmp,
            )
            .unwrap();
            let b_rgb: Vec<u8> = b.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
            let worst = a
                .iter()
                .zip(&b_rgb)
                .map(|(x, y)| x.abs_diff(*y))
                .max()
                .unwrap();
            assert!(worst <= 1, "{filter:?}: RGB and RGBX differ by {worst}");
        }
    }

    #[test]
    fn a_view_holding_what_is_needed_resizes_like_the_whole_source() {
        let (sw, sh) = (97u32, 61u32);
        let src: Vec<u8> = (0..sw * sh * 3).map(|i| (i * 13 % 251) as u8).collect();
        let mut resizer = Resizer::new();
        for filter in [
            Filter::Bilinear,
            Filter::Bicubic,
            Filter::Lanczos3,
            Filter::Nearest,
        ] {
            for ((dw, dh), window) in [
                ((40, 25), (3, 9, 20, 14)),
                ((200, 130), (60, 70, 100, 50)),
                ((97, 30), (0, 5, 97, 20)),
                ((33, 61), (7, 0, 20, 61)),
            ] {
                let (top, left, height, width) = window;
                let plan = Plan {
                    source: whole(sw, sh),
                    resized: (dh, dw),
                    window: crate::geometry::Window {
                        top: i64::from(top),
                        left: i64::from(left),
                        height,
                        width,
                    },
                    pad: [0; 3],
                    flip_horizontal: false,
                    flip_vertical: false,
                };
                let part = plan.visible();
                let view = source_needed(&plan, (sh, sw));
                let sub: Vec<u8> = (0..view.height as usize)
                    .flat_map(|y| {
                        let start =
                            ((view.top as usize + y) * sw as usize + view.left as usize) * 3;
                        src[start..start + view.width as usize * 3].to_vec()
                    })
                    .collect();
                let len = (part.width * part.height * 3) as usize;
                let (mut a, mut b) = (vec![0; len], vec![1; len]);
                let mut tmp = Vec::new();
                resize(
                    &mut resizer,
                    &src,
                    (sw, sh),
                    whole(sw, sh),
                    3,
                    &mut a,
                    (dw, dh),
                    part,
                    filter,
                    &mut tmp,
                )
                .unwrap();
                resize(
                    &mut resizer,
                    &sub,
                    (sw, sh),
                    view,
                    3,
                    &mut b,
                    (dw, dh),
                    part,
                    filter,
                    &mut tmp,
                )
                .unwrap();
                assert!(a == b, "{filter:?} {dw}x{dh} {window:?}: view {view:?}");
                assert!(view.width < sw || view.height < sh || (dw, dh) == (97, 30));
            }
        }
    }
}
