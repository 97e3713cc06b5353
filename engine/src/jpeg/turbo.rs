//! libjpeg-turbo 3 (cargo feature `turbojpeg`, on by default): the JPEG
//! decoder of every documented build, at full size or, for a `draft`
//! spec, straight at 1/2, 1/4 or 1/8 of the size in the DCT domain.
//!
//! It is the library inside Pillow's wheels, with the same IDCT
//! (`JDCT_ISLOW`) and fancy upsampling, so its pixels are Pillow's: the
//! reference the tests hold every decoder to. It also decodes what
//! zune-jpeg gets wrong (multi-scan sequential layouts, odd sampling
//! factors, tables between scans) and arithmetic coding, and it is faster
//! (ARCHITECTURE.md and the README's benchmarks have the measurements).
//! Built from the turbojpeg-sys crate's bundled source (3.1) with cmake and
//! nasm, linked statically.
//!
//! The stream handed over is the one [`super`] rebuilt after its header
//! walk and limit checks, so everything that module refuses is refused
//! here too before libjpeg-turbo sees a byte. libjpeg-turbo reports
//! recoverable damage (a truncated scan, corrupt entropy data) as a
//! warning: with `strict` the first one stops decoding and the row is an
//! error; otherwise the decoded (padded) image is kept with the warning.
//! Progressive files are held to [`SCAN_LIMIT`] scans, libjpeg-turbo's
//! guard against scan-bomb files that take minutes to decode. CMYK and YCCK
//! frames are decoded to CMYK and converted as Pillow does
//! ([`crate::color::cmyk_to_rgb`]).
//!
//! Without the feature, [`AVAILABLE`] is false and the engine resolves
//! specs to zune-jpeg, or refuses those that need libjpeg-turbo.

use super::{Decoded, JpegHeader, Request};
use crate::error::RowError;

/// Whether this build has libjpeg-turbo.
pub(crate) const AVAILABLE: bool = cfg!(feature = "turbojpeg");

/// The decoder and its version, for `stats` and logs.
pub(crate) const NAME: &str = "libjpeg-turbo 3.1";

/// Most scans a progressive JPEG may have (libjpeg-turbo's `djpeg
/// -maxscans` advice; real encoders write about 10).
#[cfg_attr(not(feature = "turbojpeg"), allow(dead_code))]
const SCAN_LIMIT: i32 = 500;

/// Decodes `stream` (the cleaned stream of the frame `header` describes)
/// at 1/`request.scale` (1, 2, 4 or 8) into `dst`: gray stays one channel,
/// YCbCr, RGB, CMYK and YCCK become RGB, or with `request.rgbx` YCbCr and
/// RGB become RGBX (four bytes a pixel, for the four-byte resize kernels).
/// Only `request.region` is decoded, its left edge moved down to the scaled
/// iMCU width libjpeg-turbo crops at: the rows above and below are skipped
/// and the columns beside it are neither inverse-transformed nor colour
/// converted. Without the feature it fails; unreachable,
/// because specs resolve to zune-jpeg then.
pub(crate) fn decode(
    stream: &[u8],
    header: &JpegHeader<'_>,
    request: &Request,
    dst: &mut Vec<u8>,
) -> Result<Decoded, RowError> {
    #[cfg(feature = "turbojpeg")]
    {
        ffi::decode(stream, header, request, dst)
    }
    #[cfg(not(feature = "turbojpeg"))]
    {
        let _ = (stream, header, request, dst);
        Err(RowError::Internal(
            "libjpeg-turbo is not built in (cargo feature `turbojpeg`)".into(),
        ))
    }
}

#[cfg(feature = "turbojpeg")]
mod ffi {
    use std::ffi::{c_int, CStr};

    use turbojpeg_sys as tj;

    use super::{Decoded, Request, SCAN_LIMIT};
    use crate::color::cmyk_to_rgb;
    use crate::error::RowError;
    use crate::geometry::Rect;
    use crate::jpeg::{scaled_size, JpegHeader};

    /// The region libjpeg-turbo decodes for `wanted` in a `width` ×
    /// `height` (scaled) image: widened by one scaled iMCU (`8 × Hmax /
    /// scale` columns, TurboJPEG's `tjMCUWidth` scaled) on each side and
    /// aligned to it, because fancy upsampling of a cropped region's edge
    /// columns lacks their neighbours; rows are kept as wanted (libjpeg
    /// keeps the upsampling context when it skips rows). The whole image
    /// when nothing is saved.
    fn crop_region(
        header: &JpegHeader<'_>,
        scale: u32,
        wanted: Rect,
        (width, height): (u32, u32),
    ) -> Rect {
        let h_max = header.frame.components().map(|c| c.0).max().unwrap_or(1);
        let h_max = if header.components == 1 {
            1
        } else {
            u32::from(h_max)
        };
        let imcu = (8 * h_max / scale).max(1);
        let whole = Rect {
            top: 0,
            left: 0,
            height,
            width,
        };
        let inside = wanted.top + wanted.height <= height && wanted.left + wanted.width <= width;
        if wanted.width == 0 || wanted.height == 0 || !inside {
            return whole;
        }
        let left = (wanted.left / imcu).saturating_sub(1) * imcu;
        let right = ((wanted.left + wanted.width).div_ceil(imcu) + 1) * imcu;
        Rect {
            top: wanted.top,
            left,
            height: wanted.height,
            width: right.min(width) - left,
        }
    }

    /// A TurboJPEG decompressor handle, made for one image (see `decode`).
    struct Handle(tj::tjhandle);

    impl Handle {
        fn new() -> Result<Self, RowError> {
            // SAFETY: tj3Init has no preconditions; null means failure.
            let ptr = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as c_int) };
            if ptr.is_null() {
                return Err(RowError::Internal(
                    "libjpeg-turbo could not create a decompressor".into(),
                ));
            }
            Ok(Self(ptr))
        }

        /// libjpeg-turbo's last error message on this handle.
        fn message(&self) -> String {
            // SAFETY: the handle is live; tj3GetErrorStr returns a
            // NUL-terminated string owned by the handle, copied at once.
            let text = unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.0)) };
            text.to_string_lossy().trim().to_string()
        }

        /// Whether the last failure was only a warning (the output image is
        /// complete, with damage padded).
        fn last_was_warning(&self) -> bool {
            // SAFETY: the handle is live.
            unsafe { tj::tj3GetErrorCode(self.0) == tj::TJERR_TJERR_WARNING as c_int }
        }

        fn set(&mut self, param: tj::TJPARAM, value: c_int) -> Result<(), RowError> {
            // SAFETY: the handle is live; tj3Set validates its arguments.
            if unsafe { tj::tj3Set(self.0, param as c_int, value) } != 0 {
                return Err(RowError::Internal(format!(
                    "libjpeg-turbo refused a parameter: {}",
                    self.message()
                )));
            }
            Ok(())
        }
    }

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: the handle came from tj3Init and is destroyed once.
            unsafe { tj::tj3Destroy(self.0) };
        }
    }

    pub(super) fn decode(
        stream: &[u8],
        header: &JpegHeader<'_>,
        request: &Request,
        dst: &mut Vec<u8>,
    ) -> Result<Decoded, RowError> {
        let Request {
            scale,
            strict,
            rgbx,
            region: wanted,
            ..
        } = *request;
        // Decoded pixel format, bytes per decoded pixel, channels returned.
        let (format, decoded, channels) = match header.components {
            1 => (tj::TJPF_TJPF_GRAY, 1, 1),
            3 if rgbx => (tj::TJPF_TJPF_RGBX, 4, 4),
            3 => (tj::TJPF_TJPF_RGB, 3, 3),
            4 => (tj::TJPF_TJPF_CMYK, 4, 3),
            n => {
                return Err(RowError::Internal(format!(
                    "cannot decode a {n}-component JPEG"
                )))
            }
        };
        if !matches!(scale, 1 | 2 | 4 | 8) {
            return Err(RowError::Internal(format!("no 1/{scale} draft scale")));
        }
        let full = scaled_size(header.width, header.height, scale);
        let mut region = crop_region(header, scale, wanted, full);
        let stream_len = tj::size_t::try_from(stream.len())
            .map_err(|_| RowError::Internal("JPEG too long for libjpeg-turbo".into()))?;
        {
            // A fresh decompressor per image: libjpeg keeps Huffman and
            // quantisation tables between images on one handle (for
            // abbreviated streams), so a reused handle would let one row's
            // tables, or a hostile file's broken ones, leak into the next
            // row. tj3Init costs microseconds next to a decode.
            let mut handle = Handle::new()?;
            handle.set(tj::TJPARAM_TJPARAM_STOPONWARNING, c_int::from(strict))?;
            handle.set(tj::TJPARAM_TJPARAM_SCANLIMIT, SCAN_LIMIT)?;
            // SAFETY: `stream` is valid for `stream_len` bytes.
            if unsafe { tj::tj3DecompressHeader(handle.0, stream.as_ptr(), stream_len) } != 0 {
                return Err(RowError::JpegDecode(format!(
                    "libjpeg-turbo: {}",
                    handle.message()
                )));
            }
            // The output buffer is sized from our own header walk; make sure
            // libjpeg-turbo read the same frame size before it writes.
            // SAFETY: the handle is live.
            let (jpeg_w, jpeg_h) = unsafe {
                (
                    tj::tj3Get(handle.0, tj::TJPARAM_TJPARAM_JPEGWIDTH as c_int),
                    tj::tj3Get(handle.0, tj::TJPARAM_TJPARAM_JPEGHEIGHT as c_int),
                )
            };
            if (i64::from(jpeg_w), i64::from(jpeg_h))
                != (i64::from(header.width), i64::from(header.height))
            {
                return Err(RowError::Internal(format!(
                    "JPEG frame size {}x{} read as {jpeg_w}x{jpeg_h} by libjpeg-turbo",
                    header.width, header.height
                )));
            }
            let factor = tj::tjscalingfactor {
                num: 1,
                denom: scale as c_int,
            };
            // SAFETY: the handle is live; 1/2, 1/4 and 1/8 are supported factors.
            if unsafe { tj::tj3SetScalingFactor(handle.0, factor) } != 0 {
                return Err(RowError::Internal(format!(
                    "libjpeg-turbo refused the scale: {}",
                    handle.message()
                )));
            }
            if (region.width, region.height) != full {
                let crop = tj::tjregion {
                    x: region.left as c_int,
                    y: region.top as c_int,
                    w: region.width as c_int,
                    h: region.height as c_int,
                };
                // SAFETY: the handle is live and the header read; the region
                // lies inside the scaled image with its left edge on the
                // scaled iMCU boundary (`crop_region`).
                if unsafe { tj::tj3SetCroppingRegion(handle.0, crop) } != 0 {
                    // Subsampling TurboJPEG cannot crop (it names none):
                    // decode it all, as libjpeg would without a crop.
                    region = Rect {
                        top: 0,
                        left: 0,
                        height: full.1,
                        width: full.0,
                    };
                }
            }
            let (width, height) = (region.width, region.height);
            let pitch = width as usize * decoded;
            let len = pitch * height as usize;
            if dst.len() < len {
                dst.resize(len, 0);
            }
            let pitch = c_int::try_from(pitch)
                .map_err(|_| RowError::Internal("row too long for libjpeg-turbo".into()))?;
            // SAFETY: `stream` is valid for `stream_len` bytes; `dst`
            // holds `height` rows of `pitch` bytes, the size libjpeg-turbo
            // writes for this frame at this scale and crop (TJSCALED of the
            // frame size it read above, checked equal to ours, cut to the
            // region it accepted).
            let status = unsafe {
                tj::tj3Decompress8(
                    handle.0,
                    stream.as_ptr(),
                    stream_len,
                    dst.as_mut_ptr(),
                    pitch,
                    format as c_int,
                )
            };
            let warning = if status == 0 {
                None
            } else if !strict && handle.last_was_warning() {
                Some(format!(
                    "decoded with recovery: libjpeg-turbo: {}",
                    handle.message()
                ))
            } else {
                return Err(RowError::JpegDecode(format!(
                    "libjpeg-turbo: {}",
                    handle.message()
                )));
            };
            if header.components == 4 {
                // In place: pixel i's RGB lands at 3i, at or before its CMYK at 4i.
                cmyk_to_rgb(&mut dst[..len], width as usize * height as usize);
            }
            Ok(Decoded {
                region,
                channels,
                warning,
            })
        }
    }
}

#[cfg(all(test, feature = "turbojpeg"))]
mod tests {
    use super::*;
    use crate::geometry::Rect;
    use crate::jpeg;

    /// A bundled 4:2:0 progressive photo (tests/data/images/ATTRIBUTION.tsv).
    const PHOTO: &[u8] = include_bytes!("../../../tests/data/images/china_progressive_420_q90.jpg");

    /// A request for the whole image at 1/`scale`, RGB.
    fn request(header: &jpeg::JpegHeader<'_>, scale: u32, strict: bool) -> Request {
        let (width, height) = jpeg::scaled_size(header.width, header.height, scale);
        Request {
            decoder: pixelfeed_schema::JpegDecoder::LibjpegTurbo,
            scale,
            region: Rect {
                top: 0,
                left: 0,
                height,
                width,
            },
            strict,
            rgbx: false,
            max_side: 1 << 20,
        }
    }

    /// The cleaned stream and header of `data`, as the pipeline prepares them.
    fn prepared(data: &[u8]) -> (Vec<u8>, jpeg::JpegHeader<'_>) {
        let mut stream = Vec::new();
        let header = jpeg::parse_header(data, &mut stream).unwrap();
        jpeg::finish_stream(data, &header, &mut stream, true).unwrap();
        (stream, header)
    }

    #[test]
    fn drafts_are_the_full_decode_averaged_over_scale_blocks() {
        // A DCT-domain 1/s decode approximates the mean of each s×s block
        // of the full image; compare against zune-jpeg's full decode (an
        // independent decoder) averaged the same way.
        let (stream, header) = prepared(PHOTO);
        let mut full = Vec::new();
        let (channels, _) = jpeg::zune::decode(&stream, &header, 1 << 20, &mut full, true).unwrap();
        assert_eq!(channels, 3);
        let (w, h) = (header.width as usize, header.height as usize);
        for scale in [1u32, 2, 4, 8] {
            let mut out = Vec::new();
            let d = decode(&stream, &header, &request(&header, scale, true), &mut out).unwrap();
            let s = scale as usize;
            assert_eq!(
                (d.region.width, d.region.height),
                (header.width.div_ceil(scale), header.height.div_ceil(scale))
            );
            assert_eq!((d.channels, d.warning), (3, None));
            let (dw, dh) = (d.region.width as usize, d.region.height as usize);
            let mut total = 0.0;
            for y in 0..h / s {
                for x in 0..w / s {
                    for c in 0..3 {
                        let mut sum = 0u32;
                        for yy in 0..s {
                            for xx in 0..s {
                                sum += u32::from(full[((y * s + yy) * w + x * s + xx) * 3 + c]);
                            }
                        }
                        let mean = f64::from(sum) / (s * s) as f64;
                        total += (mean - f64::from(out[(y * dw + x) * 3 + c])).abs();
                    }
                }
            }
            let mad = total / ((h / s) * (w / s) * 3) as f64;
            assert!(mad < 3.0, "1/{scale}: mean |draft - block mean| = {mad:.2}");
            assert!(dh * s >= h && dw * s >= w);
        }
    }

    #[test]
    fn a_broken_file_leaves_nothing_behind_for_the_next_row() {
        // libjpeg keeps tables between images on one decompressor; a file
        // whose Huffman table is broken must not break the next row.
        let (stream, header) = prepared(PHOTO);
        let mut good = Vec::new();
        decode(&stream, &header, &request(&header, 2, true), &mut good).unwrap();
        let dht = stream
            .windows(2)
            .position(|w| w == [0xFF, 0xC4])
            .expect("a DHT segment");
        for (i, bad_byte) in [(dht + 4, 0x7Fu8), (dht + 5, 0xFF)] {
            let mut broken = stream.clone();
            broken[i] = bad_byte;
            let mut out = Vec::new();
            let err = decode(&broken, &header, &request(&header, 2, true), &mut out).unwrap_err();
            assert!(err.to_string().contains("libjpeg-turbo"), "{err}");
            let mut again = Vec::new();
            decode(&stream, &header, &request(&header, 2, true), &mut again).unwrap();
            assert!(
                again == good,
                "the row after a broken file decoded differently"
            );
        }
    }

    #[test]
    fn damage_is_a_warning_or_an_error_by_strictness() {
        // Cut inside the scan data: libjpeg-turbo pads and warns.
        let cut = &PHOTO[..PHOTO.len() / 2];
        let mut stream = Vec::new();
        let header = jpeg::parse_header(cut, &mut stream).unwrap();
        jpeg::finish_stream(cut, &header, &mut stream, false).unwrap();
        let mut out = Vec::new();
        let lenient = decode(&stream, &header, &request(&header, 4, false), &mut out).unwrap();
        let warning = lenient.warning.expect("a truncated scan warns");
        assert!(warning.contains("libjpeg-turbo"), "{warning}");
        let strict = decode(&stream, &header, &request(&header, 4, true), &mut out).unwrap_err();
        assert!(strict.to_string().contains("libjpeg-turbo"), "{strict}");
    }

    #[test]
    fn a_cropped_decode_is_that_part_of_the_full_decode() {
        let (stream, header) = prepared(PHOTO);
        for scale in [1u32, 2, 4] {
            let mut full = Vec::new();
            let whole = request(&header, scale, true);
            decode(&stream, &header, &whole, &mut full).unwrap();
            let fw = whole.region.width as usize;
            let wanted = Rect {
                top: 5,
                left: 37,
                height: whole.region.height / 2,
                width: whole.region.width / 3,
            };
            let mut part = Vec::new();
            let d = decode(
                &stream,
                &header,
                &Request {
                    region: wanted,
                    ..whole
                },
                &mut part,
            )
            .unwrap();
            let got = d.region;
            // Rows as asked; columns widened to the scaled iMCU (16 px at
            // 4:2:0) and one more on each side.
            assert_eq!((got.top, got.height), (wanted.top, wanted.height));
            assert!(got.left + 16 / scale <= wanted.left && got.left.is_multiple_of(16 / scale));
            assert!(got.left + got.width >= wanted.left + wanted.width + 16 / scale);
            // What was asked for equals the full decode, pixel for pixel.
            let skip = (wanted.left - got.left) as usize * 3;
            for y in 0..got.height as usize {
                let row = &part[y * got.width as usize * 3..(y + 1) * got.width as usize * 3];
                let row = &row[skip..skip + wanted.width as usize * 3];
                let start = ((got.top as usize + y) * fw + wanted.left as usize) * 3;
                assert!(row == &full[start..start + row.len()], "1/{scale}, row {y}");
            }
        }
    }
}
