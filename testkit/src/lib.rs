//! Fixtures for pixelfeed's tests, in one place so that tests do not copy
//! them: the bundled images, the shared corpus (with a visible skip when it
//! is absent), temporary directories, a generator of valid specs for
//! property tests and, with the `server` feature, a loopback server and a
//! throwaway certificate authority.
//!
//! Not part of any shipped API (`publish = false`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

mod batches;
#[cfg(feature = "server")]
mod server;
mod specs;

pub use batches::{assert_same_output, assert_same_pixels, concat, int64s, strings};
#[cfg(feature = "server")]
pub use server::{spawn_loopback, start, LoopbackServer, Pem, TestCa};
pub use specs::any_spec;

/// The repository root (the workspace's parent of every crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits one level below the repository root")
        .to_path_buf()
}

/// `tests/data/images`: small permissively licensed images (see its
/// `ATTRIBUTION.tsv`), so tests pass without the shared corpus.
pub fn images_dir() -> PathBuf {
    repo_root().join("tests/data/images")
}

/// The bytes of bundled image `name`.
pub fn image(name: &str) -> Vec<u8> {
    let path = images_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every bundled JPEG and PNG as `(file name, bytes)`, sorted by name.
pub fn bundled_images() -> Vec<(String, Vec<u8>)> {
    let dir = images_dir();
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "png")))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&p).unwrap();
            (name, bytes)
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 10,
        "expected the bundled images in {}",
        dir.display()
    );
    out
}

/// `../shared/corpus` beside the repository (or `$PIXELFEED_CORPUS`), or
/// `None` after printing `SKIP: <why>` to the real stderr, so the skip shows
/// even when the test harness captures output.
pub fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("PIXELFEED_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/corpus"));
    if dir.is_dir() {
        Some(dir)
    } else {
        skip(&format!("{} not found", dir.display()));
        None
    }
}

/// Prints `SKIP: why` where the person running the tests sees it.
pub fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP: {why}");
}

/// A fresh, empty directory under the system temp dir, unique to this
/// process, thread and `tag`.
pub fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pixelfeed-test-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// A directory of the images, one nested, plus a non-image file.
pub fn directory_fixture(root: &Path) -> Vec<String> {
    let mut rels = Vec::new();
    for (i, (name, bytes)) in bundled_images().iter().enumerate() {
        let rel = if i % 3 == 0 {
            format!("sub/{name}")
        } else {
            name.clone()
        };
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        rels.push(rel);
    }
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    rels.push("notes.txt".into());
    rels.sort();
    rels
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
