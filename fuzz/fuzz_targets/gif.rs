//! GIF rows (`GIF89a`): see `common/one_format.rs`.
#![no_main]
#[path = "common/one_format.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"GIF87a") {
        common::run(data, b"GIF87a", 0)
    } else {
        common::run(data, b"GIF89a", 0)
    }
});
