//! Building input batches from encoded images.

use std::sync::Arc;

use arrow_array::{ArrayRef, LargeBinaryArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use pixelfeed_schema::columns;

use crate::ClientError;

/// The schema of batches built by [`image_batch`]: one nullable
/// `large_binary` column named `image` (large so a batch may exceed 2 GiB).
pub fn image_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        columns::IMAGE,
        DataType::LargeBinary,
        true,
    )]))
}

/// One input batch holding `images` (encoded JPEG/PNG bytes), in order.
pub fn image_batch<B: AsRef<[u8]>>(images: &[B]) -> RecordBatch {
    let array = LargeBinaryArray::from_iter_values(images.iter().map(AsRef::as_ref));
    // The column matches `image_schema` by construction, so this cannot fail.
    RecordBatch::try_new(image_schema(), vec![Arc::new(array) as ArrayRef])
        .unwrap_or_else(|e| unreachable!("image batch does not match its schema: {e}"))
}

/// `images` cut into input batches of at most `batch_size` rows each, in
/// order. Takes anything iterable over byte buffers: `Vec<Vec<u8>>`,
/// `&[Bytes]`, an iterator of `&[u8]`, ...
pub fn image_batches<I>(images: I, batch_size: usize) -> Result<Vec<RecordBatch>, ClientError>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    if batch_size == 0 {
        return Err(ClientError::InvalidArgument(
            "batch_size must be at least 1".into(),
        ));
    }
    let mut batches = Vec::new();
    let mut chunk = Vec::with_capacity(batch_size);
    for image in images {
        chunk.push(image);
        if chunk.len() == batch_size {
            batches.push(image_batch(&chunk));
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        batches.push(image_batch(&chunk));
    }
    Ok(batches)
}
