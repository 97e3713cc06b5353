//! Datasets the server (or `pixelfeed convert`) reads itself, so clients
//! send no image bytes, and offline conversion of them into tensor shards.
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
//! contiguous shards. [`convert`] turns a source into Parquet or Arrow IPC
//! tensor shards through the engine; [`upload`] keeps a `DoPut` table in
//! memory or spills it to Parquet.
//!
//! API boundary: no Flight, no gRPC, no tokio here. The Flight server maps
//! these types to RPCs; the CLI renders `convert`'s progress.

mod batcher;
pub mod convert;
pub mod directory;
mod files;
pub mod memory;
pub mod parquet;
mod parquet_write;
mod registry;
mod roots;
pub mod tar;
pub mod upload;
mod uri;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};
use pixelfeed_schema::excerpt;

pub(crate) use batcher::TextImageBatcher;
pub(crate) use files::{filter_glob, list_files, read_capped, source_files};
pub use registry::{check_name, Dataset, DatasetRegistry};
pub use roots::DatasetRoots;
pub use uri::SourceUri;

/// Why a dataset could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The dataset URI is malformed or names an unsupported option.
    #[error("invalid dataset URI {}: {reason}", excerpt(uri))]
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
    #[error("no dataset named {} is registered", excerpt(.0))]
    Unknown(String),
    /// The name is taken by a dataset with a different URI.
    #[error(
        "a dataset named {} is already registered with URI {}",
        excerpt(name),
        excerpt(uri)
    )]
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
    /// A run-time registration names a path outside the dataset roots
    /// (or a file inside them resolves outside).
    #[error("{0}")]
    Forbidden(String),
    /// Uploads together would exceed the server's upload budget.
    #[error("uploaded datasets together would pass the server's budget of {cap} bytes (--upload-cap-bytes); upload less or ask the operator")]
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
            max_image_bytes: pixelfeed_engine::EngineConfig::default().max_encoded_bytes,
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
