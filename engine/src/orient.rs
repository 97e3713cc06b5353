//! The eight EXIF orientations, applied to an interleaved 8-bit buffer the
//! way Pillow's `ImageOps.exif_transpose` does.
//!
//! | EXIF | Pillow transpose  | output pixel (x, y) reads source        |
//! |------|-------------------|-----------------------------------------|
//! | 1    | none              | (x, y)                                  |
//! | 2    | FLIP_LEFT_RIGHT   | (w-1-x, y)                              |
//! | 3    | ROTATE_180        | (w-1-x, h-1-y)                          |
//! | 4    | FLIP_TOP_BOTTOM   | (x, h-1-y)                              |
//! | 5    | TRANSPOSE         | (y, x)                                  |
//! | 6    | ROTATE_270 (CW)   | (y, h-1-x)                              |
//! | 7    | TRANSVERSE        | (w-1-y, h-1-x)                          |
//! | 8    | ROTATE_90 (CCW)   | (w-1-y, x)                              |

use crate::geometry::Rect;

/// An EXIF orientation, 1..=8. Anything else in the file maps to
/// [`Orientation::Normal`], as Pillow does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Orientation {
    /// 1: stored upright.
    Normal,
    /// 2: mirrored horizontally.
    FlipH,
    /// 3: rotated 180°.
    Rotate180,
    /// 4: mirrored vertically.
    FlipV,
    /// 5: mirrored along the main diagonal.
    Transpose,
    /// 6: needs a 90° clockwise turn to be upright.
    Rotate90Cw,
    /// 7: mirrored along the anti-diagonal.
    Transverse,
    /// 8: needs a 90° counter-clockwise turn to be upright.
    Rotate90Ccw,
}

impl Orientation {
    /// Maps a raw EXIF/XMP value; out-of-range values mean no rotation.
    pub(crate) fn from_exif(value: u16) -> Self {
        match value {
            2 => Self::FlipH,
            3 => Self::Rotate180,
            4 => Self::FlipV,
            5 => Self::Transpose,
            6 => Self::Rotate90Cw,
            7 => Self::Transverse,
            8 => Self::Rotate90Ccw,
            _ => Self::Normal,
        }
    }

    /// The EXIF value (1..=8) of this orientation.
    pub(crate) fn exif_value(self) -> u8 {
        match self {
            Self::Normal => 1,
            Self::FlipH => 2,
            Self::Rotate180 => 3,
            Self::FlipV => 4,
            Self::Transpose => 5,
            Self::Rotate90Cw => 6,
            Self::Transverse => 7,
            Self::Rotate90Ccw => 8,
        }
    }

    /// Whether width and height trade places.
    pub(crate) fn swaps_axes(self) -> bool {
        matches!(
            self,
            Self::Transpose | Self::Rotate90Cw | Self::Transverse | Self::Rotate90Ccw
        )
    }

    /// `(height, width)` after orientation of a `height` × `width` image.
    pub(crate) fn oriented_size(self, height: u32, width: u32) -> (u32, u32) {
        if self.swaps_axes() {
            (width, height)
        } else {
            (height, width)
        }
    }

    /// The stored pixel `(sx, sy)` shown at oriented `(x, y)`, for an image
    /// stored `height` × `width` (the table above).
    fn stored_pixel(self, (x, y): (u32, u32), height: u32, width: u32) -> (u32, u32) {
        let (w1, h1) = (width - 1, height - 1);
        match self {
            Self::Normal => (x, y),
            Self::FlipH => (w1 - x, y),
            Self::Rotate180 => (w1 - x, h1 - y),
            Self::FlipV => (x, h1 - y),
            Self::Transpose => (y, x),
            Self::Rotate90Cw => (y, h1 - x),
            Self::Transverse => (w1 - y, h1 - x),
            Self::Rotate90Ccw => (w1 - y, x),
        }
    }

    /// Where stored pixel `(sx, sy)` is shown, for an image stored
    /// `height` × `width`: the inverse of [`Self::stored_pixel`].
    fn oriented_pixel(self, (sx, sy): (u32, u32), height: u32, width: u32) -> (u32, u32) {
        let (w1, h1) = (width - 1, height - 1);
        match self {
            Self::Normal => (sx, sy),
            Self::FlipH => (w1 - sx, sy),
            Self::Rotate180 => (w1 - sx, h1 - sy),
            Self::FlipV => (sx, h1 - sy),
            Self::Transpose => (sy, sx),
            Self::Rotate90Cw => (h1 - sy, sx),
            Self::Transverse => (h1 - sy, w1 - sx),
            Self::Rotate90Ccw => (sy, w1 - sx),
        }
    }

    /// The rectangle spanned by two opposite corners mapped by `map`.
    fn map_rect(rect: Rect, map: impl Fn((u32, u32)) -> (u32, u32)) -> Rect {
        if rect.width == 0 || rect.height == 0 {
            return Rect {
                width: 0,
                height: 0,
                ..rect
            };
        }
        let (x1, y1) = map((rect.left, rect.top));
        let (x2, y2) = map((rect.left + rect.width - 1, rect.top + rect.height - 1));
        Rect {
            top: y1.min(y2),
            left: x1.min(x2),
            height: y1.abs_diff(y2) + 1,
            width: x1.abs_diff(x2) + 1,
        }
    }

    /// The stored region of an image stored `height` × `width` whose
    /// oriented copy is exactly the oriented region `rect`.
    pub(crate) fn stored_rect(self, rect: Rect, height: u32, width: u32) -> Rect {
        Self::map_rect(rect, |p| self.stored_pixel(p, height, width))
    }

    /// Where the stored region `rect` of an image stored `height` × `width`
    /// is shown once oriented.
    pub(crate) fn oriented_rect(self, rect: Rect, height: u32, width: u32) -> Rect {
        Self::map_rect(rect, |p| self.oriented_pixel(p, height, width))
    }

    /// Writes the oriented copy of `src` (`width` × `height`, `channels`
    /// interleaved bytes per pixel) into `dst`, which must hold exactly as
    /// many bytes. [`Orientation::Normal`] is a plain copy.
    pub(crate) fn apply(
        self,
        src: &[u8],
        width: usize,
        height: usize,
        channels: usize,
        dst: &mut [u8],
    ) {
        debug_assert_eq!(src.len(), width * height * channels);
        debug_assert_eq!(dst.len(), src.len());
        let (out_w, out_h) = if self.swaps_axes() {
            (height, width)
        } else {
            (width, height)
        };
        if out_w == 0 || out_h == 0 || channels == 0 {
            return;
        }
        let row_bytes = out_w * channels;
        for (y, out_row) in dst.chunks_exact_mut(row_bytes).take(out_h).enumerate() {
            // Rows that are plain source rows (possibly reversed) are copied
            // a row at a time; the axis-swapping cases gather by column.
            match self {
                Self::Normal | Self::FlipV => {
                    let sy = if self == Self::Normal {
                        y
                    } else {
                        height - 1 - y
                    };
                    out_row.copy_from_slice(&src[sy * row_bytes..(sy + 1) * row_bytes]);
                }
                Self::FlipH | Self::Rotate180 => {
                    let sy = if self == Self::FlipH {
                        y
                    } else {
                        height - 1 - y
                    };
                    let src_row = &src[sy * row_bytes..(sy + 1) * row_bytes];
                    for (out_px, src_px) in out_row
                        .chunks_exact_mut(channels)
                        .zip(src_row.chunks_exact(channels).rev())
                    {
                        out_px.copy_from_slice(src_px);
                    }
                }
                Self::Transpose | Self::Rotate90Cw | Self::Transverse | Self::Rotate90Ccw => {
                    let src_stride = width * channels;
                    for (x, out_px) in out_row.chunks_exact_mut(channels).enumerate() {
                        let (sx, sy) = match self {
                            Self::Transpose => (y, x),
                            Self::Rotate90Cw => (y, height - 1 - x),
                            Self::Transverse => (width - 1 - y, height - 1 - x),
                            _ => (width - 1 - y, x),
                        };
                        let at = sy * src_stride + sx * channels;
                        out_px.copy_from_slice(&src[at..at + channels]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3-wide, 2-high single-channel image:
    /// ```text
    /// 1 2 3
    /// 4 5 6
    /// ```
    const SRC: [u8; 6] = [1, 2, 3, 4, 5, 6];

    fn run(o: Orientation) -> Vec<u8> {
        let mut dst = vec![0; 6];
        o.apply(&SRC, 3, 2, 1, &mut dst);
        dst
    }

    #[test]
    fn all_eight_orientations_match_pillow() {
        // Expected values from Pillow:
        //   im = Image.frombytes('L', (3, 2), bytes([1, 2, 3, 4, 5, 6]))
        //   list(im.transpose(method).getdata())
        assert_eq!(run(Orientation::from_exif(1)), [1, 2, 3, 4, 5, 6]);
        assert_eq!(run(Orientation::from_exif(2)), [3, 2, 1, 6, 5, 4]);
        assert_eq!(run(Orientation::from_exif(3)), [6, 5, 4, 3, 2, 1]);
        assert_eq!(run(Orientation::from_exif(4)), [4, 5, 6, 1, 2, 3]);
        // 2 wide, 3 high from here on.
        assert_eq!(run(Orientation::from_exif(5)), [1, 4, 2, 5, 3, 6]);
        assert_eq!(run(Orientation::from_exif(6)), [4, 1, 5, 2, 6, 3]);
        assert_eq!(run(Orientation::from_exif(7)), [6, 3, 5, 2, 4, 1]);
        assert_eq!(run(Orientation::from_exif(8)), [3, 6, 2, 5, 1, 4]);
    }

    #[test]
    fn multi_channel_pixels_move_whole() {
        let src = [10, 11, 12, 20, 21, 22];
        let mut dst = [0; 6];
        Orientation::FlipH.apply(&src, 2, 1, 3, &mut dst);
        assert_eq!(dst, [20, 21, 22, 10, 11, 12]);
        Orientation::Rotate90Cw.apply(&src, 2, 1, 3, &mut dst);
        assert_eq!(dst, [10, 11, 12, 20, 21, 22]);
    }

    #[test]
    fn invalid_values_mean_normal() {
        for v in [0, 9, 255, u16::MAX] {
            assert_eq!(Orientation::from_exif(v), Orientation::Normal);
        }
        assert_eq!(Orientation::Rotate90Cw.oriented_size(2, 3), (3, 2));
        assert_eq!(Orientation::Rotate180.oriented_size(2, 3), (2, 3));
    }

    #[test]
    fn regions_map_between_stored_and_oriented_as_apply_does() {
        let (w, h) = (7usize, 5usize);
        let src: Vec<u8> = (0..w * h).map(|i| i as u8).collect();
        let all = [
            Orientation::Normal,
            Orientation::FlipH,
            Orientation::Rotate180,
            Orientation::FlipV,
            Orientation::Transpose,
            Orientation::Rotate90Cw,
            Orientation::Transverse,
            Orientation::Rotate90Ccw,
        ];
        for o in all {
            let mut full = vec![0; w * h];
            o.apply(&src, w, h, 1, &mut full);
            let (oh, ow) = o.oriented_size(h as u32, w as u32);
            for stored in [
                Rect {
                    top: 1,
                    left: 2,
                    height: 3,
                    width: 4,
                },
                Rect {
                    top: 0,
                    left: 0,
                    height: 5,
                    width: 7,
                },
                Rect {
                    top: 4,
                    left: 6,
                    height: 1,
                    width: 1,
                },
            ] {
                let shown = o.oriented_rect(stored, h as u32, w as u32);
                assert_eq!(o.stored_rect(shown, h as u32, w as u32), stored, "{o:?}");
                // Orienting the stored part alone gives that part of the
                // oriented image.
                let part: Vec<u8> = (0..stored.height as usize)
                    .flat_map(|y| {
                        let row = (stored.top as usize + y) * w + stored.left as usize;
                        src[row..row + stored.width as usize].to_vec()
                    })
                    .collect();
                let mut oriented_part = vec![0; part.len()];
                o.apply(
                    &part,
                    stored.width as usize,
                    stored.height as usize,
                    1,
                    &mut oriented_part,
                );
                let expected: Vec<u8> = (0..shown.height as usize)
                    .flat_map(|y| {
                        let row = (shown.top as usize + y) * ow as usize + shown.left as usize;
                        full[row..row + shown.width as usize].to_vec()
                    })
                    .collect();
                assert_eq!(oriented_part, expected, "{o:?} {stored:?}");
                assert!(shown.top + shown.height <= oh && shown.left + shown.width <= ow);
            }
        }
    }
}
