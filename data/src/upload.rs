//! A table uploaded with `DoPut`, becoming a dataset: kept in memory, or
//! written to a Parquet file in a spill directory.
//!
//! Blocking (a spilled upload writes files); the Flight server calls it
//! from its blocking pool and enforces the byte caps itself.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;

use crate::memory::MemorySource;
use crate::parquet::ParquetSource;
use crate::parquet_write::{parquet_writer, write_parquet_batch};
use crate::{Dataset, DatasetError};

/// An upload in progress.
#[derive(Debug)]
pub enum Upload {
    /// Batches held in memory.
    Memory {
        /// What was received so far.
        batches: Vec<RecordBatch>,
    },
    /// A Parquet file being written under a temporary name, renamed to
    /// `NAME.parquet` once complete.
    Spill {
        /// Created with the first batch (its schema).
        writer: Option<Box<ArrowWriter<File>>>,
        /// The temporary file.
        tmp: PathBuf,
        /// The final file.
        path: PathBuf,
    },
}

impl Upload {
    /// A new upload named `name`: spilled into `spill_dir` when given, else
    /// in memory.
    pub fn new(spill_dir: Option<&Path>, name: &str) -> Self {
        match spill_dir {
            Some(dir) => Upload::Spill {
                writer: None,
                tmp: dir.join(format!(".{name}.parquet.tmp")),
                path: dir.join(format!("{name}.parquet")),
            },
            None => Upload::Memory {
                batches: Vec::new(),
            },
        }
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
            Upload::Spill { writer, tmp, .. } => {
                let writer = match writer {
                    Some(w) => w,
                    None => writer.insert(Box::new(parquet_writer(tmp, batch.schema())?)),
                };
                write_parquet_batch(writer, &batch, tmp)
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
            Upload::Spill { writer, tmp, path } => {
                let writer = match writer {
                    Some(w) => w,
                    None => Box::new(parquet_writer(&tmp, schema)?),
                };
                writer.close().map_err(|source| DatasetError::Parquet {
                    path: tmp.clone(),
                    source,
                })?;
                std::fs::rename(&tmp, &path).map_err(|e| DatasetError::io(&path, e))?;
                let source = ParquetSource::open(&path, pixelfeed_schema::columns::IMAGE)?;
                Ok(Dataset::from_source(name, uri, Arc::new(source)))
            }
        }
    }
}
