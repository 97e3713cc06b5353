//! BMP rows (`BM` and a known info-header size, as the sniffer wants
//! them): see `common/one_format.rs`.
#![no_main]
#[path = "common/one_format.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut v = data.to_vec();
    if v.len() < 18 {
        v.resize(18, 0);
    }
    let info = u32::from_le_bytes([v[14], v[15], v[16], v[17]]);
    if !matches!(info, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124) {
        v[14..18].copy_from_slice(&40u32.to_le_bytes());
    }
    common::run(&v, b"BM", 0);
});
