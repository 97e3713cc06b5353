//! Writing Parquet files (zstd, row groups bounded in bytes): convert's
//! shards and `DoPut` uploads spilled to disk.

use std::fs::File;
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::DatasetError;

/// A Parquet row group is closed once this much data is buffered, so the
/// writer never holds much more than this (tensor rows are large).
const ROW_GROUP_BYTES: usize = 64 << 20;

/// A Parquet writer for `schema` at `path` (zstd, no dictionaries: tensor
/// values do not repeat; the Arrow schema, extension metadata included, is
/// stored in the footer by the writer).
pub(crate) fn parquet_writer(
    path: &Path,
    schema: SchemaRef,
) -> Result<ArrowWriter<File>, DatasetError> {
    let file = File::create(path).map_err(|e| DatasetError::io(path, e))?;
    writer_into(file, path, schema)
}

/// Like [`parquet_writer`], but `path` must not exist yet (not even as a
/// symlink): the file is created, never reused.
pub(crate) fn new_parquet_writer(
    path: &Path,
    schema: SchemaRef,
) -> Result<ArrowWriter<File>, DatasetError> {
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| DatasetError::io(path, e))?;
    writer_into(file, path, schema)
}

fn writer_into(
    file: File,
    path: &Path,
    schema: SchemaRef,
) -> Result<ArrowWriter<File>, DatasetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_dictionary_enabled(false)
        .build();
    ArrowWriter::try_new(file, schema, Some(props)).map_err(|source| DatasetError::Parquet {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes one batch, closing the row group once it holds
/// [`ROW_GROUP_BYTES`].
pub(crate) fn write_parquet_batch(
    writer: &mut ArrowWriter<File>,
    batch: &RecordBatch,
    path: &Path,
) -> Result<(), DatasetError> {
    let err = |source| DatasetError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    writer.write(batch).map_err(err)?;
    if writer.in_progress_size() >= ROW_GROUP_BYTES {
        writer.flush().map_err(err)?;
    }
    Ok(())
}
