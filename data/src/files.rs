//! File discovery and capped reads shared by the file-based sources.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::DatasetError;

/// Reads at most `cap + 1` bytes of `reader`: enough for the engine to
/// refuse an oversized image by its encoded-size limit without the whole
/// file ever being held.
pub(crate) fn read_capped(reader: impl Read, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    reader
        .take(cap.saturating_add(1) as u64)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Sorted regular files under `root` (recursive, symlinks to files
/// followed, hidden entries skipped), as paths relative to `root`.
pub(crate) fn list_files(root: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = std::fs::read_dir(&dir).map_err(|e| DatasetError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DatasetError::io(&dir, e))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = rel.join(entry.file_name());
            let meta =
                std::fs::metadata(entry.path()).map_err(|e| DatasetError::io(&entry.path(), e))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files of a multi-file source: `path` itself when it is a file,
/// else the `.{extension}` files under it (matching `glob`, if given),
/// sorted. An error when there are none.
pub(crate) fn source_files(
    path: &Path,
    extension: &str,
    glob: Option<&str>,
) -> Result<Vec<PathBuf>, DatasetError> {
    let files: Vec<PathBuf> = if path.is_dir() {
        filter_glob(list_files(path)?, glob)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == extension))
            .map(|p| path.join(p))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        return Err(DatasetError::Invalid(format!(
            "{} holds no .{extension} files",
            path.display()
        )));
    }
    Ok(files)
}

/// Keeps the paths matching `glob` (against the whole relative path, `*`
/// crossing directories), or all of them without one.
pub(crate) fn filter_glob(
    paths: Vec<PathBuf>,
    glob: Option<&str>,
) -> Result<Vec<PathBuf>, DatasetError> {
    let Some(glob) = glob else { return Ok(paths) };
    let pattern = ::glob::Pattern::new(glob).map_err(|e| DatasetError::Uri {
        uri: glob.to_string(),
        reason: e.to_string(),
    })?;
    Ok(paths
        .into_iter()
        .filter(|p| pattern.matches_path(p))
        .collect())
}
