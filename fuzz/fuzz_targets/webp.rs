//! WebP rows (`RIFF....WEBP`): see `common/one_format.rs`.
#![no_main]
#[path = "common/one_format.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // RIFF at 0 and WEBP at 8: force the second, then the first.
    let mut v = data.to_vec();
    if v.len() < 12 {
        v.resize(12, 0);
    }
    v[8..12].copy_from_slice(b"WEBP");
    common::run(&v, b"RIFF", 0);
});
