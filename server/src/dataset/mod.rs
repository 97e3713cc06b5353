//! Server-side datasets: sources the server reads itself, so clients send
//! no image bytes.
//!
//! A [`DatasetSource`] yields Arrow record batches with a binary `image`
//! column plus passthrough columns, for any contiguous row range, streamed
//! in bounded batches ([`ReadOptions`]) — never a whole file in memory:
//!
//! - [`directory`]: image files under a directory (recursive, sorted by
//!   relative path, optional glob) as `path` + `image`;
//! - [`parquet`]: a Parquet file or a directory of them with a binary image
//!   column (renamed to `image`), every other column passed through;
//! - [`tar`]: WebDataset-style `.tar` shards, one row per sample key:
//!   `key`, `image`, and one utf8 column per `.cls` / `.txt` / `.json`
//!   sidecar;
//! - [`memory`]: a table uploaded over Flight (`DoPut`).
//!
//! [`DatasetRegistry`] names them; row counts are known once a source is
//! opened, which is what lets [`shard_ranges`] cut a dataset into
//! contiguous shards. This module knows nothing of Flight.

pub mod directory;
pub mod memory;
pub mod parquet;
pub mod tar;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

/// Why a dataset could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The dataset URI is malformed or names an unsupported option.
    #[error("invalid dataset URI {uri:?}: {reason}")]
    Uri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A Parquet file could not be read or written.
    #[error("{}: {source}", path.display())]
    Parquet {
        /// The file involved.
        path: PathBuf,
        /// The reader's or writer's error.
        source: ::parquet::errors::ParquetError,
    },
    /// Arrow rejected a batch (a bug or an inconsistent source).
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    /// The source's content does not fit the dataset contract (no image
    /// column, files with differing schemas, a reserved column name).
    #[error("{0}")]
    Invalid(String),
    /// No dataset is registered under this name.
    #[error("no dataset named {0:?} is registered")]
    Unknown(String),
    /// The name is taken by a dataset with a different URI.
    #[error("a dataset named {name:?} is already registered with URI {uri:?}")]
    Conflict {
        /// The name asked for.
        name: String,
        /// The URI it is registered with.
        uri: String,
    },
    /// A read asked for rows the dataset does not have.
    #[error("rows {start}..{end} are out of range: the dataset has {rows} rows")]
    OutOfRange {
        /// First row asked for.
        start: u64,
        /// One past the last row asked for.
        end: u64,
        /// Rows the dataset has.
        rows: u64,
    },
    /// An upload would exceed the in-memory cap.
    #[error("the upload exceeds the {cap}-byte in-memory dataset cap; start the server with a spill directory or upload less")]
    TooLarge {
        /// The cap in bytes.
        cap: usize,
    },
}

impl DatasetError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The parts (files, shards) of a multi-part source that `range` touches,
/// each with the row range local to it, in order. `parts` gives each part
/// and its row count.
pub(crate) fn parts_in_range<P>(
    parts: impl IntoIterator<Item = (P, u64)>,
    range: &Range<u64>,
) -> Vec<(P, Range<u64>)> {
    let mut touched = Vec::new();
    let mut offset = 0;
    for (part, rows) in parts {
        let (lo, hi) = (range.start.max(offset), range.end.min(offset + rows));
        if lo < hi {
            touched.push((part, lo - offset..hi - offset));
        }
        offset += rows;
    }
    touched
}

/// Batches of one read, in row order.
pub type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch, DatasetError>> + Send>;

/// How reads are cut into batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// Most rows in one batch.
    pub batch_rows: usize,
    /// A batch closes once its encoded image bytes reach this (directory
    /// and tar sources; Parquet batches are bounded by rows only, as the
    /// reader decodes whole pages).
    pub batch_bytes: usize,
    /// Largest image file read whole. A larger one is cut to this plus one
    /// byte, which the engine's encoded-size limit then refuses as an
    /// error row — the file is never read whole into memory.
    pub max_image_bytes: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            batch_rows: 64,
            batch_bytes: 32 << 20,
            max_image_bytes: crate::engine::EngineConfig::default().max_encoded_bytes,
        }
    }
}

/// A readable table of encoded images.
pub trait DatasetSource: Send + Sync + fmt::Debug {
    /// Columns of every batch: `image` (binary) plus passthrough columns.
    fn schema(&self) -> SchemaRef;
    /// Total rows.
    fn rows(&self) -> u64;
    /// Streams rows `range` (within `0..rows()`) in order, in batches as
    /// `options` says.
    fn read(&self, range: Range<u64>, options: &ReadOptions) -> Result<BatchIter, DatasetError>;
}

/// Where a dataset comes from, parsed from its URI:
/// `[dir:|parquet:|tar:]PATH[?key=value&...]`.
///
/// Without a scheme, a path ending in `.parquet` is Parquet, one ending in
/// `.tar` is WebDataset, and a directory is a directory of images.
/// Options: `glob=PATTERN` (dir: which files, matched against the path
/// relative to the root; tar: which `.tar` files of a directory),
/// `column=NAME` (parquet: the image column, default `image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUri {
    /// Image files under a directory.
    Directory {
        /// The root directory.
        root: PathBuf,
        /// Optional glob the relative paths must match.
        glob: Option<String>,
    },
    /// A Parquet file or directory of `.parquet` files.
    Parquet {
        /// The file or directory.
        path: PathBuf,
        /// Name of the binary image column.
        column: String,
    },
    /// A WebDataset `.tar` file or a directory of them.
    Tar {
        /// The file or directory.
        path: PathBuf,
        /// Optional glob over the directory's `.tar` files.
        glob: Option<String>,
    },
}

impl SourceUri {
    /// Parses a dataset URI.
    pub fn parse(uri: &str) -> Result<Self, DatasetError> {
        let bad = |reason: String| DatasetError::Uri {
            uri: uri.to_string(),
            reason,
        };
        let (scheme, rest) = match uri.split_once(':') {
            Some((s @ ("dir" | "parquet" | "tar" | "file"), rest)) => (Some(s), rest),
            _ => (None, uri),
        };
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(bad("no path".into()));
        }
        let mut options = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("option {pair:?} is not key=value")))?;
            options.insert(k.to_string(), v.to_string());
        }
        let path = PathBuf::from(path);
        let kind = match scheme {
            Some(s @ ("dir" | "parquet" | "tar")) => s,
            _ if path.extension().is_some_and(|e| e == "parquet") => "parquet",
            _ if path.extension().is_some_and(|e| e == "tar") => "tar",
            _ => "dir",
        };
        let allowed: &[&str] = match kind {
            "parquet" => &["column"],
            _ => &["glob"],
        };
        if let Some(k) = options.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(format!(
                "unknown option {k:?} for a {kind} source (allowed: {})",
                allowed.join(", ")
            )));
        }
        let glob = options.remove("glob");
        if let Some(g) = &glob {
            ::glob::Pattern::new(g).map_err(|e| bad(format!("bad glob {g:?}: {e}")))?;
        }
        Ok(match kind {
            "parquet" => Self::Parquet {
                path,
                column: options
                    .remove("column")
                    .unwrap_or_else(|| pixelfeed_schema::columns::IMAGE.to_string()),
            },
            "tar" => Self::Tar { path, glob },
            _ => Self::Directory { root: path, glob },
        })
    }

    /// Opens the source (lists the files, reads footers or tar headers to
    /// count rows). Blocking.
    pub fn open(&self) -> Result<Arc<dyn DatasetSource>, DatasetError> {
        Ok(match self {
            Self::Directory { root, glob } => {
                Arc::new(directory::DirectorySource::open(root, glob.as_deref())?)
            }
            Self::Parquet { path, column } => Arc::new(parquet::ParquetSource::open(path, column)?),
            Self::Tar { path, glob } => Arc::new(tar::TarSource::open(path, glob.as_deref())?),
        })
    }
}

/// A named, opened source.
#[derive(Debug)]
pub struct Dataset {
    name: String,
    uri: String,
    source: Arc<dyn DatasetSource>,
}

impl Dataset {
    /// Opens `uri` (see [`SourceUri`]) as dataset `name`. Blocking.
    pub fn open(name: &str, uri: &str) -> Result<Self, DatasetError> {
        check_name(name)?;
        let source = SourceUri::parse(uri)?.open()?;
        Ok(Self::from_source(name, uri, source))
    }

    /// Wraps an already opened source.
    pub fn from_source(name: &str, uri: &str, source: Arc<dyn DatasetSource>) -> Self {
        Self {
            name: name.to_string(),
            uri: uri.to_string(),
            source,
        }
    }

    /// The dataset's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it was opened from.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Total rows.
    pub fn rows(&self) -> u64 {
        self.source.rows()
    }

    /// Columns of every batch (`image` plus passthrough columns).
    pub fn schema(&self) -> SchemaRef {
        self.source.schema()
    }

    /// Streams rows `range` in order. Blocking (call from a blocking thread).
    pub fn read(
        &self,
        range: Range<u64>,
        options: &ReadOptions,
    ) -> Result<BatchIter, DatasetError> {
        let rows = self.rows();
        if range.start > range.end || range.end > rows {
            return Err(DatasetError::OutOfRange {
                start: range.start,
                end: range.end,
                rows,
            });
        }
        self.source.read(range, options)
    }
}

/// Dataset names: 1 to 128 of `A-Z a-z 0-9 _ - .`, so they are safe as
/// file names (spilled uploads) and in tickets.
pub fn check_name(name: &str) -> Result<(), DatasetError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(DatasetError::Invalid(format!(
            "dataset name {name:?} must be 1-128 characters of A-Z a-z 0-9 _ - . not starting with ."
        )))
    }
}

/// The named datasets a server offers. Cheap to share (`Arc`), safe to
/// register into while serving.
#[derive(Debug, Default)]
pub struct DatasetRegistry {
    datasets: RwLock<BTreeMap<String, Arc<Dataset>>>,
}

impl DatasetRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens `uri` and registers it as `name`. Registering the same name
    /// and URI again re-opens it (picking up new files); a different URI
    /// under a taken name is a [`DatasetError::Conflict`]. Blocking.
    pub fn register(&self, name: &str, uri: &str) -> Result<Arc<Dataset>, DatasetError> {
        self.check_free(name, uri)?;
        self.insert(Dataset::open(name, uri)?)
    }

    /// Registers an opened dataset, with the same conflict rule as
    /// [`register`](Self::register).
    pub fn insert(&self, dataset: Dataset) -> Result<Arc<Dataset>, DatasetError> {
        let mut map = self.datasets.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = map.get(dataset.name()) {
            if old.uri() != dataset.uri() {
                return Err(DatasetError::Conflict {
                    name: dataset.name().to_string(),
                    uri: old.uri().to_string(),
                });
            }
        }
        let dataset = Arc::new(dataset);
        map.insert(dataset.name().to_string(), Arc::clone(&dataset));
        Ok(dataset)
    }

    /// Fails early (before an expensive open) when `name` is taken by
    /// another URI.
    pub fn check_free(&self, name: &str, uri: &str) -> Result<(), DatasetError> {
        match self.get(name) {
            Ok(old) if old.uri() != uri => Err(DatasetError::Conflict {
                name: name.to_string(),
                uri: old.uri().to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// The dataset called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Dataset>, DatasetError> {
        let map = self.datasets.read().unwrap_or_else(|p| p.into_inner());
        map.get(name)
            .cloned()
            .ok_or_else(|| DatasetError::Unknown(name.to_string()))
    }

    /// Every dataset, sorted by name.
    pub fn list(&self) -> Vec<Arc<Dataset>> {
        let map = self.datasets.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }
}

/// Cuts `0..rows` into `shards` contiguous ranges, in order, whose sizes
/// differ by at most one (the first `rows % shards` are one longer). With
/// more shards than rows the last ones are empty. `shards` of 0 counts as 1.
pub fn shard_ranges(rows: u64, shards: u64) -> Vec<Range<u64>> {
    let shards = shards.max(1);
    let (base, extra) = (rows / shards, rows % shards);
    let mut start = 0;
    (0..shards)
        .map(|i| {
            let len = base + u64::from(i < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

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

/// Builds batches of utf8 columns followed by a binary `image` column,
/// closing each at [`ReadOptions::batch_rows`] rows or
/// [`ReadOptions::batch_bytes`] image bytes (directory and tar sources).
pub(crate) struct TextImageBatcher {
    schema: SchemaRef,
    texts: Vec<StringBuilder>,
    image: BinaryBuilder,
    rows: usize,
    bytes: usize,
    options: ReadOptions,
}

impl TextImageBatcher {
    /// The schema of `text_columns` (nullable utf8) then `image` (binary).
    pub(crate) fn schema(text_columns: &[String]) -> SchemaRef {
        let mut fields: Vec<Field> = text_columns
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect();
        fields.push(Field::new(
            pixelfeed_schema::columns::IMAGE,
            DataType::Binary,
            true,
        ));
        Arc::new(Schema::new(fields))
    }

    pub(crate) fn new(schema: SchemaRef, options: &ReadOptions) -> Self {
        let texts = (1..schema.fields().len())
            .map(|_| StringBuilder::new())
            .collect();
        Self {
            schema,
            texts,
            image: BinaryBuilder::new(),
            rows: 0,
            bytes: 0,
            options: options.clone(),
        }
    }

    /// Appends one row; `texts` holds one value per text column.
    pub(crate) fn push(&mut self, texts: &[Option<&str>], image: Option<&[u8]>) {
        for (builder, value) in self.texts.iter_mut().zip(texts) {
            builder.append_option(*value);
        }
        self.image.append_option(image);
        self.rows += 1;
        self.bytes += image.map_or(0, <[u8]>::len);
    }

    /// Whether the batch in progress should be closed.
    pub(crate) fn full(&self) -> bool {
        self.rows >= self.options.batch_rows.max(1) || self.bytes >= self.options.batch_bytes
    }

    /// Closes the batch in progress (`None` when it is empty).
    pub(crate) fn finish(&mut self) -> Option<Result<RecordBatch, DatasetError>> {
        if self.rows == 0 {
            return None;
        }
        self.rows = 0;
        self.bytes = 0;
        let mut columns: Vec<ArrayRef> = self
            .texts
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(self.image.finish()));
        Some(RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(DatasetError::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_maps_to_the_parts_it_touches() {
        let parts = [("a", 3), ("b", 0), ("c", 4), ("d", 2)];
        assert_eq!(
            parts_in_range(parts, &(2..8)),
            vec![("a", 2..3), ("c", 0..4), ("d", 0..1)]
        );
        assert_eq!(parts_in_range(parts, &(3..7)), vec![("c", 0..4)]);
        assert!(parts_in_range(parts, &(9..9)).is_empty());
    }

    #[test]
    fn shards_are_contiguous_balanced_and_complete() {
        for rows in [0u64, 1, 7, 10, 100] {
            for k in [1u64, 2, 3, 4, 16] {
                let r = shard_ranges(rows, k);
                assert_eq!(r.len() as u64, k);
                assert_eq!(r[0].start, 0);
                assert_eq!(r.last().unwrap().end, rows);
                for w in r.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<_> = r.iter().map(|x| x.end - x.start).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn uris_parse_by_scheme_then_extension() {
        assert_eq!(
            SourceUri::parse("dir:/a/b?glob=*.jpg").unwrap(),
            SourceUri::Directory {
                root: "/a/b".into(),
                glob: Some("*.jpg".into())
            }
        );
        assert_eq!(
            SourceUri::parse("/x/t.parquet?column=img").unwrap(),
            SourceUri::Parquet {
                path: "/x/t.parquet".into(),
                column: "img".into()
            }
        );
        assert!(matches!(
            SourceUri::parse("file:///x/s.tar").unwrap(),
            SourceUri::Tar { .. }
        ));
        assert!(SourceUri::parse("dir:/a?column=x").is_err());
        assert!(SourceUri::parse("parquet:").is_err());
        assert!(SourceUri::parse("dir:/a?glob=[").is_err());
    }

    #[test]
    fn names_are_restricted() {
        assert!(check_name("imagenet-val_1.0").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
