//! Cutting an output batch into messages of a bounded size.
//!
//! arrow-flight's encoder can split batches itself, but it sizes them with
//! `get_buffer_memory_size`, which counts whole shared buffers: a slice, or
//! a passthrough column that points into a large received message, looks as
//! big as its parent (arrow-rs issue 3407), so it would over-split. We size
//! with `get_slice_memory_size` instead, which counts only the bytes a slice
//! actually covers, and turn the encoder's own splitting off.

use arrow_array::{Array, RecordBatch};

/// Bytes of Arrow data `batch` covers (what its IPC body will roughly hold).
pub fn batch_data_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|col| {
            col.to_data()
                .get_slice_memory_size()
                // Only fails for types whose layout it cannot size; the
                // whole-buffer size is an over-estimate, which errs on the
                // side of smaller messages.
                .unwrap_or_else(|_| col.get_buffer_memory_size())
        })
        .sum()
}

/// Splits `batch` into consecutive zero-copy slices of whole rows, each
/// holding about `target_bytes` of data or less, in row order.
///
/// The row count per slice comes from the average row size, so rows of
/// uneven size (long strings in a passthrough column) can push a slice a
/// little over the target; tensor rows, which dominate, are all the same
/// size. Every slice holds at least one row, so a row larger than the
/// target travels alone. An empty batch yields no slices.
pub fn split_rows(batch: &RecordBatch, target_bytes: usize) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    if rows == 0 {
        return Vec::new();
    }
    let total = batch_data_bytes(batch);
    let per_row = total.div_ceil(rows);
    // Rows without data (per_row == 0) all fit in one message.
    let rows_per_slice = target_bytes
        .checked_div(per_row)
        .map_or(rows, |n| n.clamp(1, rows));
    if rows_per_slice == rows {
        return vec![batch.clone()];
    }
    (0..rows)
        .step_by(rows_per_slice)
        .map(|offset| batch.slice(offset, rows_per_slice.min(rows - offset)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array};
    use arrow_schema::{DataType, Field};

    use super::*;

    /// A batch of `rows` rows, each an `id` and a 100-float tensor (408 bytes).
    fn batch(rows: usize) -> RecordBatch {
        let values = Float32Array::from_iter_values((0..rows * 100).map(|v| v as f32));
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let tensor = FixedSizeListArray::new(item, 100, Arc::new(values), None);
        let ids = Int64Array::from_iter_values(0..rows as i64);
        RecordBatch::try_from_iter([
            ("id", Arc::new(ids) as ArrayRef),
            ("tensor", Arc::new(tensor) as ArrayRef),
        ])
        .unwrap()
    }

    fn ids(slices: &[RecordBatch]) -> Vec<i64> {
        slices
            .iter()
            .flat_map(|b| {
                let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                col.values().to_vec()
            })
            .collect()
    }

    #[test]
    fn small_batch_is_one_slice() {
        let b = batch(10);
        let slices = split_rows(&b, 1 << 20);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].num_rows(), 10);
    }

    #[test]
    fn large_batch_is_cut_into_bounded_slices_in_order() {
        let b = batch(10);
        // 408 bytes a row: 1000 bytes fit 2 rows.
        let slices = split_rows(&b, 1000);
        assert_eq!(
            slices.iter().map(|s| s.num_rows()).collect::<Vec<_>>(),
            [2, 2, 2, 2, 2]
        );
        assert!(slices.iter().all(|s| batch_data_bytes(s) <= 1000));
        assert_eq!(ids(&slices), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_row_larger_than_the_target_travels_alone() {
        let b = batch(3);
        let slices = split_rows(&b, 1);
        assert_eq!(slices.len(), 3);
        assert!(slices.iter().all(|s| s.num_rows() == 1));
        assert_eq!(split_rows(&b, 0).len(), 3);
    }

    #[test]
    fn slices_of_slices_are_sized_by_what_they_cover() {
        // A 1-row slice of a 1000-row batch must count as one row, not as
        // the whole shared buffer, or it would be split forever.
        let b = batch(1000).slice(500, 4);
        assert_eq!(batch_data_bytes(&b), 4 * 408);
        assert_eq!(split_rows(&b, 4 * 408).len(), 1);
        assert_eq!(ids(&split_rows(&b, 900)), [500, 501, 502, 503]);
    }

    #[test]
    fn empty_batch_yields_nothing() {
        assert!(split_rows(&batch(0), 100).is_empty());
    }
}
