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

use super::error::RowError;

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

/// Resizes `src` (`src_w` × `src_h`, 1 or 3 interleaved channels) into
/// `dst` (`dst_w` × `dst_h`, same channels, exactly sized). `tmp` holds the
/// horizontally resized intermediate when both sides change.
#[allow(clippy::too_many_arguments)]
pub(crate) fn resize(
    resizer: &mut Resizer,
    src: &[u8],
    (src_w, src_h): (u32, u32),
    channels: usize,
    dst: &mut [u8],
    (dst_w, dst_h): (u32, u32),
    filter: Filter,
    tmp: &mut Vec<u8>,
) -> Result<(), RowError> {
    let pixel_type = match channels {
        1 => PixelType::U8,
        3 => PixelType::U8x3,
        n => return Err(RowError::Internal(format!("cannot resize {n} channels"))),
    };
    if filter == Filter::Nearest {
        nearest(src, (src_w, src_h), channels, dst, (dst_w, dst_h));
        return Ok(());
    }
    let two_pass = src_w != dst_w && src_h != dst_h;
    if !two_pass {
        return resize_once(
            resizer,
            src,
            (src_w, src_h),
            dst,
            (dst_w, dst_h),
            pixel_type,
            filter,
        );
    }
    let len = dst_w as usize * src_h as usize * channels;
    if tmp.len() < len {
        tmp.resize(len, 0);
    }
    let mid = &mut tmp[..len];
    resize_once(
        resizer,
        src,
        (src_w, src_h),
        mid,
        (dst_w, src_h),
        pixel_type,
        filter,
    )?;
    resize_once(
        resizer,
        mid,
        (dst_w, src_h),
        dst,
        (dst_w, dst_h),
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
    channels: usize,
    dst: &mut [u8],
    (dst_w, dst_h): (u32, u32),
) {
    let src_stride = src_w as usize * channels;
    let dst_stride = dst_w as usize * channels;
    for (sy, out_row) in nearest_axis(src_h, dst_h).zip(dst.chunks_exact_mut(dst_stride)) {
        let in_row = &src[sy * src_stride..(sy + 1) * src_stride];
        for (sx, px) in nearest_axis(src_w, dst_w).zip(out_row.chunks_exact_mut(channels)) {
            px.copy_from_slice(&in_row[sx * channels..(sx + 1) * channels]);
        }
    }
}

fn resize_once(
    resizer: &mut Resizer,
    src: &[u8],
    (src_w, src_h): (u32, u32),
    dst: &mut [u8],
    (dst_w, dst_h): (u32, u32),
    pixel_type: PixelType,
    filter: Filter,
) -> Result<(), RowError> {
    let fail = |e: &dyn std::fmt::Display| RowError::Resize(e.to_string());
    let src_image = ImageRef::new(src_w, src_h, src, pixel_type).map_err(|e| fail(&e))?;
    let mut dst_image =
        Image::from_slice_u8(dst_w, dst_h, dst, pixel_type).map_err(|e| fail(&e))?;
    let options = ResizeOptions::new().resize_alg(algorithm(filter));
    resizer
        .resize(&src_image, &mut dst_image, &options)
        .map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            1,
            &mut dst,
            (2, 1),
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
            1,
            &mut dst,
            (3, 3),
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
            1,
            &mut dst,
            (2, 4),
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
            3,
            &mut dst,
            (2, 1),
            Filter::Lanczos3,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(dst, src);
    }
}
