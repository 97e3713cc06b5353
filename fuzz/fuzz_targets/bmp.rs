//! BMP rows (`BM`, at least 14 bytes): see `common/one_format.rs`.
#![no_main]
#[path = "common/one_format.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut v = data.to_vec();
    if v.len() < 14 {
        v.resize(14, 0);
    }
    common::run(&v, b"BM", 0);
});
