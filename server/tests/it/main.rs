//! The Flight server over loopback, one test binary with a module per
//! feature. Each test starts its own server on a free port
//! (`pixelfeed_testkit::spawn_loopback`), so tests run in parallel and a
//! failure in one cannot leak into another.

#[cfg(unix)]
mod datasets;
mod exchange;
mod limits;
mod observability;
mod pool;
mod security;
mod threats;
#[cfg(unix)]
mod unix_socket;
mod wire;

pub use pixelfeed_testkit::start;

/// A cheap spec: 32×48 RGB uint8, HWC (4608 bytes a row).
pub const SMALL: &str =
    r#"{"resize":{"mode":"exact","height":32,"width":48},"dtype":"uint8","layout":"hwc"}"#;

/// The bundled test images' bytes, sorted by file name.
pub fn bundled_images() -> Vec<Vec<u8>> {
    pixelfeed_testkit::bundled_images()
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect()
}
