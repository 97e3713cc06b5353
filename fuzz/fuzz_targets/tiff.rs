//! TIFF rows (either byte order, BigTIFF too): see `common/one_format.rs`.
#![no_main]
#[path = "common/one_format.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let magic: &[u8] = match data.get(..4) {
        Some(m @ (b"II*\0" | b"MM\0*" | b"II+\0" | b"MM\0+")) => m,
        _ => b"II*\0",
    };
    common::run(data, magic, 0);
});
