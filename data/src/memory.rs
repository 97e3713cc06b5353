//! A table held in memory (uploaded with `DoPut`): its batches as received,
//! read back as zero-copy slices.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::{BatchIter, DatasetError, DatasetSource, ReadOptions};

/// Record batches kept in memory.
#[derive(Debug)]
pub struct MemorySource {
    schema: SchemaRef,
    batches: Arc<[RecordBatch]>,
    rows: u64,
}

impl MemorySource {
    /// Holds `batches`, which must all have `schema` and an `image` column.
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Self, DatasetError> {
        pixelfeed_schema::image_column_index(&schema)
            .map_err(|e| DatasetError::Invalid(e.to_string()))?;
        if let Some(b) = batches.iter().find(|b| b.schema_ref() != &schema) {
            return Err(DatasetError::Invalid(format!(
                "a batch's schema {} differs from the table's {}",
                b.schema(),
                schema
            )));
        }
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        Ok(Self {
            schema,
            batches: batches.into(),
            rows,
        })
    }
}

impl DatasetSource for MemorySource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    fn read(&self, range: Range<u64>, options: &ReadOptions) -> Result<BatchIter, DatasetError> {
        let step = options.batch_rows.max(1) as u64;
        let mut slices = Vec::new();
        let mut offset = 0u64;
        for batch in self.batches.iter() {
            let len = batch.num_rows() as u64;
            let (lo, hi) = (range.start.max(offset), range.end.min(offset + len));
            let mut at = lo;
            while at < hi {
                let n = step.min(hi - at);
                slices.push(Ok(batch.slice((at - offset) as usize, n as usize)));
                at += n;
            }
            offset += len;
        }
        Ok(Box::new(slices.into_iter()))
    }
}
