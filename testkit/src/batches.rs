//! Reading output batches in assertions.

use arrow_array::cast::AsArray as _;
use arrow_array::{Array, RecordBatch, StringArray};

/// `batches` as one batch (they share a schema; at least one).
pub fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow_select::concat::concat_batches(&batches[0].schema(), batches).unwrap()
}

/// The utf8 column `col` as strings.
pub fn strings(batch: &RecordBatch, col: &str) -> Vec<Option<String>> {
    let a = batch.column_by_name(col).unwrap();
    let a = a.as_any().downcast_ref::<StringArray>().unwrap();
    a.iter().map(|s| s.map(str::to_string)).collect()
}

/// The int64 column `col` of every batch, in order.
pub fn int64s(batches: &[RecordBatch], col: &str) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(col)
                .unwrap_or_else(|| panic!("no column {col}"))
                .as_primitive::<arrow_array::types::Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

/// The engine output columns of `got` equal the reference's.
pub fn assert_same_output(got: &RecordBatch, reference: &RecordBatch) {
    assert_same_pixels(got, reference);
    assert_eq!(
        got.column_by_name("error").unwrap().as_ref(),
        reference.column_by_name("error").unwrap().as_ref(),
        "column error"
    );
}

/// The tensors and source sizes of `got` equal the reference's (errors
/// aside: rows the server read itself quote none of their bytes).
pub fn assert_same_pixels(got: &RecordBatch, reference: &RecordBatch) {
    for col in ["tensor", "height", "width"] {
        assert_eq!(
            got.column_by_name(col).unwrap().as_ref(),
            reference.column_by_name(col).unwrap().as_ref(),
            "column {col}"
        );
    }
}
