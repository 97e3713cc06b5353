//! A Parquet file, or a directory of `.parquet` files read in sorted order
//! as one table, with a binary image column.
//!
//! The image column (any name, renamed `image`) must be binary, large
//! binary or binary view; every other column passes through. Opening reads
//! only footers (row counts per row group); a read opens the files its
//! range touches, selects just the overlapping row groups and rows, and
//! streams them with the arrow-rs reader, so memory holds one batch of rows
//! (and the reader's current pages), never a whole file.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};
use pixelfeed_schema::columns::IMAGE;

use crate::{parts_in_range, source_files, BatchIter, DatasetError, DatasetSource, ReadOptions};

/// One file: its path and the row count of each row group.
#[derive(Debug, Clone)]
struct ParquetPart {
    path: PathBuf,
    group_rows: Vec<u64>,
}

impl ParquetPart {
    fn rows(&self) -> u64 {
        self.group_rows.iter().sum()
    }
}

/// Parquet file(s) with an image column.
#[derive(Debug)]
pub struct ParquetSource {
    parts: Arc<[ParquetPart]>,
    /// The schema batches are given (image column renamed).
    schema: SchemaRef,
    rows: u64,
}

fn parquet_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> DatasetError + '_ {
    move |source| DatasetError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

fn open_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, DatasetError> {
    let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err(path))
}

impl ParquetSource {
    /// Reads the footers of `path` (a file, or every `.parquet` file under
    /// a directory) and checks they share one schema with a binary
    /// `column`.
    pub fn open(path: &Path, column: &str) -> Result<Self, DatasetError> {
        let files = source_files(path, "parquet", None)?;
        let mut parts = Vec::with_capacity(files.len());
        let mut schema: Option<SchemaRef> = None;
        for file in files {
            let builder = open_builder(&file)?;
            let this = renamed(builder.schema(), column)
                .map_err(|e| DatasetError::Invalid(format!("{}: {e}", file.display())))?;
            match &schema {
                None => schema = Some(this),
                Some(first) if first.fields() == this.fields() => {}
                Some(first) => {
                    return Err(DatasetError::Invalid(format!(
                        "{} has schema {this}, unlike the first file's {first}",
                        file.display()
                    )))
                }
            }
            let group_rows = builder
                .metadata()
                .row_groups()
                .iter()
                .map(|g| g.num_rows().max(0) as u64)
                .collect();
            parts.push(ParquetPart {
                path: file,
                group_rows,
            });
        }
        let rows = parts.iter().map(ParquetPart::rows).sum();
        Ok(Self {
            parts: parts.into(),
            schema: schema.unwrap_or_else(|| Arc::new(Schema::empty())),
            rows,
        })
    }
}

/// The file's schema with `column` renamed `image` and the schema-level
/// metadata dropped (field metadata is kept).
fn renamed(schema: &SchemaRef, column: &str) -> Result<SchemaRef, String> {
    if column != IMAGE && schema.field_with_name(IMAGE).is_ok() {
        return Err(format!(
            "it has both an {IMAGE:?} column and the image column {column:?}"
        ));
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let f = f.as_ref().clone();
            if f.name() == column {
                f.with_name(IMAGE)
            } else {
                f
            }
        })
        .collect();
    let out = Schema::new(fields);
    pixelfeed_schema::image_column_index(&out).map_err(|e| {
        format!("{e} (the image column is {column:?}; name another with ?column=NAME)")
    })?;
    Ok(Arc::new(out))
}

impl DatasetSource for ParquetSource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    fn read(&self, range: Range<u64>, options: &ReadOptions) -> Result<BatchIter, DatasetError> {
        // The parts the range touches, opened lazily, one at a time.
        let plan = parts_in_range(self.parts.iter().map(|p| (p.clone(), p.rows())), &range);
        let schema = Arc::clone(&self.schema);
        let batch_rows = options.batch_rows.max(1);
        let iter = plan.into_iter().flat_map(move |(part, local)| {
            let schema = Arc::clone(&schema);
            match read_part(&part, local, batch_rows) {
                Ok(reader) => Box::new(reader.map(move |b| {
                    let b = b.map_err(DatasetError::from)?;
                    RecordBatch::try_new(Arc::clone(&schema), b.columns().to_vec())
                        .map_err(DatasetError::from)
                })) as BatchIter,
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        });
        Ok(Box::new(iter))
    }
}

/// A reader over rows `local` of one file: only the row groups the range
/// overlaps, and within them only the rows asked for.
fn read_part(
    part: &ParquetPart,
    local: Range<u64>,
    batch_rows: usize,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, DatasetError> {
    let mut groups = Vec::new();
    let mut first_group_start = None;
    let mut start = 0;
    for (i, &n) in part.group_rows.iter().enumerate() {
        if start < local.end && local.start < start + n {
            groups.push(i);
            first_group_start.get_or_insert(start);
        }
        start += n;
    }
    let skip = local.start - first_group_start.unwrap_or(0);
    let selection = RowSelection::from(vec![
        RowSelector::skip(skip as usize),
        RowSelector::select((local.end - local.start) as usize),
    ]);
    open_builder(&part.path)?
        .with_row_groups(groups)
        .with_row_selection(selection)
        .with_batch_size(batch_rows)
        .build()
        .map_err(parquet_err(&part.path))
}
