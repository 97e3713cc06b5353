//! A table uploaded with `DoPut`, becoming a dataset: kept in memory, or
//! written to a Parquet file in a spill directory; and the ledger that
//! holds all uploads, in memory and on disk, to one byte budget.
//!
//! Blocking (a spilled upload writes files); the Flight server calls it
//! from its blocking pool.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;

use crate::memory::MemorySource;
use crate::parquet::ParquetSource;
use crate::parquet_write::{new_parquet_writer, write_parquet_batch};
use crate::{Dataset, DatasetError};

/// The bytes every uploaded dataset holds (Arrow data size, in memory or
/// spilled), by name, against one cap, plus what uploads in progress have
/// reserved.
#[derive(Debug)]
pub struct UploadLedger {
    cap: usize,
    state: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    committed: BTreeMap<String, usize>,
    reserved: usize,
}

impl UploadLedger {
    /// A ledger allowing `cap` bytes across all uploads.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            state: Mutex::default(),
        })
    }

    /// The cap in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes held by finished uploads and reserved by running ones.
    pub fn used(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.committed.values().sum::<usize>() + state.reserved
    }

    /// Starts accounting for an upload named `name` (nothing reserved yet).
    pub fn reserve(self: &Arc<Self>, name: &str) -> Reservation {
        Reservation {
            ledger: Arc::clone(self),
            name: name.to_string(),
            bytes: 0,
        }
    }
}

/// The bytes one upload in progress holds in its [`UploadLedger`]; given
/// back when dropped unless committed.
#[derive(Debug)]
pub struct Reservation {
    ledger: Arc<UploadLedger>,
    name: String,
    bytes: usize,
}

impl Reservation {
    /// Reserves `more` bytes.
    ///
    /// # Errors
    /// [`DatasetError::TooLarge`] when all uploads together would pass the
    /// cap (an upload replacing one of the same name counts both until it
    /// finishes).
    pub fn grow(&mut self, more: usize) -> Result<(), DatasetError> {
        let mut state = self.ledger.state.lock().unwrap_or_else(|e| e.into_inner());
        let used = state.committed.values().sum::<usize>() + state.reserved;
        if used.saturating_add(more) > self.ledger.cap {
            return Err(DatasetError::TooLarge {
                cap: self.ledger.cap,
            });
        }
        state.reserved += more;
        self.bytes += more;
        Ok(())
    }

    /// The upload finished: its bytes now belong to dataset `name`,
    /// replacing any earlier upload of that name.
    pub fn commit(mut self) {
        let mut state = self.ledger.state.lock().unwrap_or_else(|e| e.into_inner());
        state.reserved -= self.bytes;
        state.committed.insert(
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.bytes),
        );
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut state = self.ledger.state.lock().unwrap_or_else(|e| e.into_inner());
            state.reserved -= self.bytes;
        }
    }
}

/// An upload in progress.
#[derive(Debug)]
pub enum Upload {
    /// Batches held in memory.
    Memory {
        /// What was received so far.
        batches: Vec<RecordBatch>,
    },
    /// A Parquet file being written under a temporary name.
    Spill(SpillFile),
}

/// A Parquet file written as `.NAME.parquet.tmp` (created new, never
/// reused), renamed to `NAME.parquet` once complete, removed if the upload
/// fails.
#[derive(Debug)]
pub struct SpillFile {
    /// Created with the first batch (its schema).
    writer: Option<Box<ArrowWriter<File>>>,
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        if !self.done && self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Upload {
    /// A new upload named `name` (a [`check_name`](crate::check_name)d
    /// name: no separators, no leading dot, so it names a file directly in
    /// `spill_dir`): spilled into `spill_dir` when given, else in memory.
    /// `replace`: whether `NAME.parquet` may already exist there (an earlier
    /// upload of this name in this server's registry); any other existing
    /// file is never overwritten.
    ///
    /// # Errors
    /// [`DatasetError::Invalid`] when `NAME.parquet` exists and may not be
    /// replaced.
    pub fn new(spill_dir: Option<&Path>, name: &str, replace: bool) -> Result<Self, DatasetError> {
        Ok(match spill_dir {
            Some(dir) => {
                let path = dir.join(format!("{name}.parquet"));
                if !replace && path.symlink_metadata().is_ok() {
                    return Err(DatasetError::Invalid(format!(
                        "the spill directory already holds {name}.parquet, which is not an \
                         upload of this server's: choose another name"
                    )));
                }
                Upload::Spill(SpillFile {
                    writer: None,
                    tmp: dir.join(format!(".{name}.parquet.tmp")),
                    path,
                    done: false,
                })
            }
            None => Upload::Memory {
                batches: Vec::new(),
            },
        })
    }

    /// Adds a batch (blocking: a spilled upload writes it out).
    ///
    /// # Errors
    /// [`DatasetError`] when the spill file cannot be written.
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), DatasetError> {
        match self {
            Upload::Memory { batches } => {
                batches.push(batch);
                Ok(())
            }
            Upload::Spill(spill) => {
                let writer = match &mut spill.writer {
                    Some(w) => w,
                    None => spill
                        .writer
                        .insert(Box::new(new_parquet_writer(&spill.tmp, batch.schema())?)),
                };
                write_parquet_batch(writer, &batch, &spill.tmp)
            }
        }
    }

    /// The finished upload as dataset `name` with URI `uri` (blocking).
    ///
    /// # Errors
    /// [`DatasetError`] when the spill file cannot be completed or read
    /// back, or the batches do not form a dataset.
    pub fn finish(self, schema: SchemaRef, name: &str, uri: &str) -> Result<Dataset, DatasetError> {
        match self {
            Upload::Memory { batches } => {
                let source = MemorySource::new(schema, batches)?;
                Ok(Dataset::from_source(name, uri, Arc::new(source)))
            }
            Upload::Spill(mut spill) => {
                let writer = match spill.writer.take() {
                    Some(w) => w,
                    None => Box::new(new_parquet_writer(&spill.tmp, schema)?),
                };
                // Removed on failure from here on (the writer is gone).
                let closed = writer.close().map_err(|source| DatasetError::Parquet {
                    path: spill.tmp.clone(),
                    source,
                });
                let renamed = closed.and_then(|_| {
                    std::fs::rename(&spill.tmp, &spill.path)
                        .map_err(|e| DatasetError::io(&spill.path, e))
                });
                if let Err(e) = renamed {
                    let _ = std::fs::remove_file(&spill.tmp);
                    return Err(e);
                }
                spill.done = true;
                let source = ParquetSource::open(&spill.path, pixelfeed_schema::columns::IMAGE)?;
                Ok(Dataset::from_source(name, uri, Arc::new(source)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_holds_all_uploads_to_one_cap() {
        let ledger = UploadLedger::new(100);
        let mut a = ledger.reserve("a");
        a.grow(60).unwrap();
        let mut b = ledger.reserve("b");
        assert!(matches!(
            b.grow(50),
            Err(DatasetError::TooLarge { cap: 100 })
        ));
        b.grow(40).unwrap();
        assert_eq!(ledger.used(), 100);
        drop(b);
        assert_eq!(ledger.used(), 60);
        a.commit();
        assert_eq!(ledger.used(), 60);
        // Replacing "a": both count until the new one commits.
        let mut again = ledger.reserve("a");
        assert!(again.grow(50).is_err());
        again.grow(30).unwrap();
        again.commit();
        assert_eq!(ledger.used(), 30);
    }

    #[test]
    fn a_spill_never_overwrites_a_file_it_did_not_write() {
        let dir = std::env::temp_dir().join(format!("pixelfeed-spill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("theirs.parquet"), b"operator data").unwrap();
        let err = Upload::new(Some(&dir), "theirs", false).unwrap_err();
        assert!(err.to_string().contains("theirs.parquet"), "{err}");
        assert_eq!(
            std::fs::read(dir.join("theirs.parquet")).unwrap(),
            b"operator data"
        );
        // A failed upload leaves no temporary file behind.
        let batch = RecordBatch::try_from_iter([(
            "image",
            Arc::new(arrow_array::BinaryArray::from_vec(vec![b"x"])) as arrow_array::ArrayRef,
        )])
        .unwrap();
        let mut upload = Upload::new(Some(&dir), "mine", false).unwrap();
        upload.push(batch).unwrap();
        assert!(dir.join(".mine.parquet.tmp").exists());
        drop(upload);
        assert!(!dir.join(".mine.parquet.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
