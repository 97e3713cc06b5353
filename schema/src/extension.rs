//! The tensor column's Arrow extension type, `arrow.fixed_shape_tensor`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field};
use serde_json::{Map, Value};

use crate::spec::{DType, TransformSpec};
use crate::{columns, ContractError, DTYPE_METADATA_KEY};

/// Field metadata key naming an Arrow extension type.
pub const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";
/// Field metadata key carrying an Arrow extension type's parameters.
pub const EXTENSION_METADATA_KEY: &str = "ARROW:extension:metadata";
/// The canonical extension name of a fixed-shape tensor column.
pub const FIXED_SHAPE_TENSOR: &str = "arrow.fixed_shape_tensor";

/// Parameters of an `arrow.fixed_shape_tensor` column.
///
/// Serialised by hand because arrow-rs 60's `FixedShapeTensor` writes
/// `"dim_names": null` and the misspelt `"permutations"`, which pyarrow
/// rejects; parsing is lenient and accepts both spellings and nulls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedShapeTensorMetadata {
    /// Logical shape of one row's tensor.
    pub shape: Vec<usize>,
    /// Optional names of the dimensions.
    pub dim_names: Option<Vec<String>>,
    /// Optional physical-to-logical permutation.
    pub permutation: Option<Vec<usize>>,
}

impl FixedShapeTensorMetadata {
    /// Compact JSON with absent fields left out, as the Arrow spec and pyarrow expect.
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("shape".into(), Value::from(self.shape.clone()));
        if let Some(names) = &self.dim_names {
            m.insert("dim_names".into(), Value::from(names.clone()));
        }
        if let Some(p) = &self.permutation {
            m.insert("permutation".into(), Value::from(p.clone()));
        }
        Value::Object(m).to_string()
    }

    /// Parses the metadata leniently: `null` fields count as absent and the
    /// misspelling `permutations` is accepted.
    pub fn parse(json: &str) -> Result<Self, ContractError> {
        let bad = |m: &str| ContractError::TensorMetadata(m.to_string());
        let v: Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
        let m = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
        let usizes = |v: &Value, what: &str| -> Result<Vec<usize>, ContractError> {
            v.as_array()
                .ok_or_else(|| bad(&format!("{what} must be an array")))?
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| bad(&format!("{what} must hold non-negative integers")))
                })
                .collect()
        };
        let shape = usizes(
            m.get("shape").ok_or_else(|| bad("shape is missing"))?,
            "shape",
        )?;
        let dim_names = match m.get("dim_names") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_array()
                    .ok_or_else(|| bad("dim_names must be an array"))?
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| bad("dim_names must hold strings"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let permutation = match m.get("permutation").or_else(|| m.get("permutations")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(usizes(v, "permutation")?),
        };
        Ok(Self {
            shape,
            dim_names,
            permutation,
        })
    }

    /// Reads the metadata off a field tagged `arrow.fixed_shape_tensor`;
    /// `None` when the field carries another or no extension type.
    pub fn from_field(field: &Field) -> Option<Result<Self, ContractError>> {
        let md = field.metadata();
        if md.get(EXTENSION_NAME_KEY).map(String::as_str) != Some(FIXED_SHAPE_TENSOR) {
            return None;
        }
        Some(Self::parse(
            md.get(EXTENSION_METADATA_KEY)
                .map(String::as_str)
                .unwrap_or("{}"),
        ))
    }
}

/// The Arrow element type of a spec's tensor values.
pub fn value_type(dtype: DType) -> DataType {
    match dtype {
        DType::Float32 => DataType::Float32,
        DType::Float16 => DataType::Float16,
        // Arrow has no bfloat16: the bits travel as uint16, marked by
        // DTYPE_METADATA_KEY on the tensor field.
        DType::BFloat16 => DataType::UInt16,
        DType::UInt8 => DataType::UInt8,
    }
}

/// The output `tensor` field for a spec: nullable `FixedSizeList<T, N>` with
/// the fixed-shape-tensor extension metadata.
pub fn tensor_field(spec: &TransformSpec) -> Field {
    let shape = spec.shape();
    let meta = FixedShapeTensorMetadata {
        shape: shape.to_vec(),
        dim_names: Some(spec.dim_names().iter().map(|s| s.to_string()).collect()),
        permutation: None,
    };
    // The item field is nullable and named "item" to match pyarrow's default
    // `pa.list_(type, n)` storage, so storage types compare equal there.
    let item = Arc::new(Field::new("item", value_type(spec.dtype), true));
    Field::new(
        columns::TENSOR,
        DataType::FixedSizeList(item, spec.elements_per_row() as i32),
        true,
    )
    .with_metadata(HashMap::from([
        (
            EXTENSION_NAME_KEY.to_string(),
            FIXED_SHAPE_TENSOR.to_string(),
        ),
        (EXTENSION_METADATA_KEY.to_string(), meta.to_json()),
        (
            DTYPE_METADATA_KEY.to_string(),
            spec.dtype.name().to_string(),
        ),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_json_leaves_out_absent_fields() {
        let m = FixedShapeTensorMetadata {
            shape: vec![3, 2],
            dim_names: None,
            permutation: None,
        };
        assert_eq!(m.to_json(), r#"{"shape":[3,2]}"#);
    }

    #[test]
    fn metadata_parse_is_lenient() {
        let m = FixedShapeTensorMetadata::parse(
            r#"{"shape":[3,4,5],"dim_names":null,"permutations":[2,0,1]}"#,
        )
        .unwrap();
        assert_eq!(m.shape, vec![3, 4, 5]);
        assert_eq!(m.dim_names, None);
        assert_eq!(m.permutation, Some(vec![2, 0, 1]));
        assert!(FixedShapeTensorMetadata::parse(r#"{"dim_names":["a"]}"#).is_err());
    }
}
