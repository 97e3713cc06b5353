//! Batches of text columns plus a binary `image` column, bounded in rows
//! and bytes (directory and tar sources).

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::{DatasetError, ReadOptions};

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
