//! Typed access to the tensors in an output batch.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, UInt16Type, UInt32Type, UInt8Type};
use arrow_array::{Array, FixedSizeListArray, PrimitiveArray, RecordBatch, StringArray};
use arrow_schema::DataType;
use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};
use pixelfeed_schema::{columns, FixedShapeTensorMetadata, DTYPE_METADATA_KEY};

use crate::ClientError;

/// An output batch seen as tensors: one fixed-shape tensor per row plus the
/// per-row error and source size.
///
/// Built with `TensorBatch::try_from(&batch)`; cheap (it shares the
/// batch's buffers). Failed rows have a null tensor whose slot in
/// [`as_f32`](Self::as_f32) / [`as_u8`](Self::as_u8) is zero-filled, and a
/// non-null [`error`](Self::error).
#[derive(Debug, Clone)]
pub struct TensorBatch {
    tensor: FixedSizeListArray,
    metadata: FixedShapeTensorMetadata,
    /// The spec's dtype name from the field metadata (`bfloat16` travels as uint16).
    dtype: Option<String>,
    errors: Option<StringArray>,
    warnings: Option<StringArray>,
    heights: Option<PrimitiveArray<UInt32Type>>,
    widths: Option<PrimitiveArray<UInt32Type>>,
}

impl TryFrom<&RecordBatch> for TensorBatch {
    type Error = ClientError;

    fn try_from(batch: &RecordBatch) -> Result<Self, ClientError> {
        let bad = |m: String| ClientError::NotTensorBatch(m);
        let schema = batch.schema();
        let index = schema
            .index_of(columns::TENSOR)
            .map_err(|_| bad(format!("no {:?} column", columns::TENSOR)))?;
        let field = schema.field(index);
        let metadata = FixedShapeTensorMetadata::from_field(field)
            .ok_or_else(|| bad("the tensor column is not an arrow.fixed_shape_tensor".into()))?
            .map_err(|e| bad(e.to_string()))?;
        let tensor = batch
            .column(index)
            .as_fixed_size_list_opt()
            .ok_or_else(|| bad(format!("the tensor column is {}", field.data_type())))?
            .clone();
        let per_row: usize = metadata.shape.iter().product();
        if per_row != tensor.value_length() as usize {
            return Err(bad(format!(
                "shape {:?} holds {per_row} elements but each row has {}",
                metadata.shape,
                tensor.value_length()
            )));
        }
        if !matches!(
            tensor.value_type(),
            DataType::Float32 | DataType::Float16 | DataType::UInt16 | DataType::UInt8
        ) {
            return Err(bad(format!(
                "tensor elements are {}, expected float32, float16, uint16 (bfloat16) or uint8",
                tensor.value_type()
            )));
        }
        let column = |name: &str| batch.column_by_name(name);
        Ok(Self {
            dtype: field.metadata().get(DTYPE_METADATA_KEY).cloned(),
            errors: column(columns::ERROR).and_then(|c| c.as_string_opt::<i32>().cloned()),
            warnings: column(columns::WARNING).and_then(|c| c.as_string_opt::<i32>().cloned()),
            heights: column(columns::HEIGHT).and_then(|c| c.as_primitive_opt().cloned()),
            widths: column(columns::WIDTH).and_then(|c| c.as_primitive_opt().cloned()),
            tensor,
            metadata,
        })
    }
}

impl TensorBatch {
    /// Number of rows (tensors).
    pub fn num_rows(&self) -> usize {
        self.tensor.len()
    }

    /// Shape of one row's tensor, e.g. `[3, 224, 224]`.
    pub fn shape(&self) -> &[usize] {
        &self.metadata.shape
    }

    /// Names of the shape's dimensions, e.g. `["C", "H", "W"]`, when given.
    pub fn dim_names(&self) -> Option<&[String]> {
        self.metadata.dim_names.as_deref()
    }

    /// Elements in one row's tensor (the product of [`Self::shape`]).
    pub fn elements_per_row(&self) -> usize {
        self.tensor.value_length() as usize
    }

    /// Element type: `Float32` or `UInt8`.
    pub fn value_type(&self) -> DataType {
        self.tensor.value_type()
    }

    /// The underlying `tensor` column.
    pub fn tensor(&self) -> &FixedSizeListArray {
        &self.tensor
    }

    /// All rows' elements, row after row (`num_rows × elements_per_row`),
    /// when the elements are float32. Failed rows are zero-filled.
    pub fn as_f32(&self) -> Option<&[f32]> {
        self.values::<Float32Type>()
    }

    /// All rows' elements, row after row, when the elements are uint8.
    /// Failed rows are zero-filled.
    pub fn as_u8(&self) -> Option<&[u8]> {
        self.values::<UInt8Type>()
    }

    /// All rows' elements when the spec's dtype is float16. Failed rows are zero-filled.
    pub fn as_f16(&self) -> Option<&[f16]> {
        self.values::<Float16Type>()
    }

    /// All rows' elements when the spec's dtype is bfloat16 (carried as
    /// uint16 bits and marked `pixelfeed.dtype: bfloat16`), reinterpreted
    /// without a copy. Failed rows are zero-filled.
    pub fn as_bf16(&self) -> Option<&[bf16]> {
        if self.dtype.as_deref() != Some("bfloat16") {
            return None;
        }
        Some(self.values::<UInt16Type>()?.reinterpret_cast::<bf16>())
    }

    /// The spec's dtype name (`float32`, `float16`, `bfloat16`, `uint8`), from
    /// the tensor field's `pixelfeed.dtype` metadata.
    pub fn dtype(&self) -> Option<&str> {
        self.dtype.as_deref()
    }

    /// Row `i`'s float32 tensor; `None` when out of range, when the row
    /// failed, or when the elements are not float32.
    pub fn row_f32(&self, i: usize) -> Option<&[f32]> {
        self.row(self.as_f32()?, i)
    }

    /// Row `i`'s uint8 tensor; `None` when out of range, when the row
    /// failed, or when the elements are not uint8.
    pub fn row_u8(&self, i: usize) -> Option<&[u8]> {
        self.row(self.as_u8()?, i)
    }

    /// Whether row `i` holds a tensor (it was decoded successfully).
    pub fn is_valid(&self, i: usize) -> bool {
        i < self.num_rows() && self.tensor.is_valid(i)
    }

    /// Why row `i` failed, or `None` for a good (or out-of-range) row.
    pub fn error(&self, i: usize) -> Option<&str> {
        let errors = self.errors.as_ref()?;
        (i < errors.len() && errors.is_valid(i)).then(|| errors.value(i))
    }

    /// Why row `i`'s pixels may be imperfect (it decoded only with
    /// recovery under `strict: false`), or `None`.
    pub fn warning(&self, i: usize) -> Option<&str> {
        let warnings = self.warnings.as_ref()?;
        (i < warnings.len() && warnings.is_valid(i)).then(|| warnings.value(i))
    }

    /// Row `i`'s source image `(height, width)` after EXIF orientation,
    /// when known.
    pub fn source_size(&self, i: usize) -> Option<(u32, u32)> {
        let value = |a: &Option<PrimitiveArray<UInt32Type>>| {
            let a = a.as_ref()?;
            (i < a.len() && a.is_valid(i)).then(|| a.value(i))
        };
        Some((value(&self.heights)?, value(&self.widths)?))
    }

    /// The elements covering this batch's rows. The values of a sliced
    /// list array can extend beyond its rows, so cut at the first and
    /// last row's offsets rather than taking the whole child.
    fn values<T: arrow_array::ArrowPrimitiveType>(&self) -> Option<&[T::Native]> {
        let values = self.tensor.values().as_primitive_opt::<T>()?.values();
        let start = self.tensor.value_offset_at(0);
        let end = self.tensor.value_offset_at(self.num_rows());
        values.get(start..end)
    }

    fn row<'a, T>(&self, all: &'a [T], i: usize) -> Option<&'a [T]> {
        if !self.is_valid(i) {
            return None;
        }
        let n = self.elements_per_row();
        all.get(i * n..(i + 1) * n)
    }
}
