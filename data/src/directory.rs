//! A directory of image files: one row per file, `path` (relative to the
//! root, `/`-separated) and `image` (the file's bytes).
//!
//! Files are listed once, when the source is opened (recursive, sorted by
//! relative path, hidden entries skipped, optional glob), so row numbers
//! are stable while the source is registered. Every listed file is a row:
//! a file that is not an image becomes an error row in the engine, and a
//! file that vanished or cannot be read becomes a null image (also an error
//! row), so rows never shift.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::{
    filter_glob, list_files, read_capped, BatchIter, DatasetError, DatasetRoots, DatasetSource,
    ReadOptions, TextImageBatcher,
};

/// Name of the passthrough column holding each file's relative path.
pub const PATH_COLUMN: &str = "path";

/// Image files under a root directory.
#[derive(Debug)]
pub struct DirectorySource {
    root: PathBuf,
    files: Arc<[PathBuf]>,
    schema: SchemaRef,
    /// Set for run-time registrations: every file read is checked again.
    roots: Option<DatasetRoots>,
}

impl DirectorySource {
    /// Lists the files under `root` matching `glob` (all files without one).
    pub fn open(root: &Path, glob: Option<&str>) -> Result<Self, DatasetError> {
        let files = filter_glob(list_files(root)?, glob)?;
        Ok(Self {
            root: root.to_path_buf(),
            files: files.into(),
            schema: TextImageBatcher::schema(&[PATH_COLUMN.to_string()]),
            roots: None,
        })
    }

    /// Like [`DirectorySource::open`], confined to `roots`: every listed
    /// file must resolve under one of them, and is checked again each time
    /// it is read (one that has moved out becomes a null image).
    ///
    /// # Errors
    /// [`DatasetError::Forbidden`] naming the first file that resolves
    /// outside the roots; otherwise as [`DirectorySource::open`].
    pub fn open_within(
        root: &Path,
        glob: Option<&str>,
        roots: &DatasetRoots,
    ) -> Result<Self, DatasetError> {
        let mut source = Self::open(root, glob)?;
        for rel in source.files.iter() {
            roots.confine(&root.join(rel))?;
        }
        source.roots = Some(roots.clone());
        Ok(source)
    }
}

impl DatasetSource for DirectorySource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn rows(&self) -> u64 {
        self.files.len() as u64
    }

    fn read(&self, range: Range<u64>, options: &ReadOptions) -> Result<BatchIter, DatasetError> {
        Ok(Box::new(DirectoryReader {
            root: self.root.clone(),
            files: Arc::clone(&self.files),
            next: range.start as usize,
            end: range.end as usize,
            max_image_bytes: options.max_image_bytes,
            batcher: TextImageBatcher::new(Arc::clone(&self.schema), options),
            roots: self.roots.clone(),
        }))
    }
}

struct DirectoryReader {
    root: PathBuf,
    files: Arc<[PathBuf]>,
    next: usize,
    end: usize,
    max_image_bytes: usize,
    batcher: TextImageBatcher,
    roots: Option<DatasetRoots>,
}

impl Iterator for DirectoryReader {
    type Item = Result<RecordBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.end && !self.batcher.full() {
            let rel = &self.files[self.next];
            self.next += 1;
            let full = self.root.join(rel);
            let bytes = std::fs::File::open(&full)
                .and_then(|f| match &self.roots {
                    Some(roots) => roots
                        .check_open(&f, &full)
                        .map(|()| f)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string())),
                    None => Ok(f),
                })
                .and_then(|f| read_capped(f, self.max_image_bytes))
                .inspect_err(|e| {
                    tracing::warn!(path = %full.display(), error = %e, "unreadable dataset file: null image");
                })
                .ok();
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            self.batcher.push(&[Some(&rel)], bytes.as_deref());
        }
        self.batcher.finish()
    }
}
