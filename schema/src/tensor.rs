//! Arrow side of the contract: the tensor column's extension type and the
//! output schema.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema};
use serde_json::{Map, Value};

use crate::columns;
use crate::spec::{DType, TransformSpec};

/// Field metadata key naming an Arrow extension type.
pub const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";
/// Field metadata key carrying an Arrow extension type's parameters.
pub const EXTENSION_METADATA_KEY: &str = "ARROW:extension:metadata";
/// The canonical extension name of a fixed-shape tensor column.
pub const FIXED_SHAPE_TENSOR: &str = "arrow.fixed_shape_tensor";
/// Schema metadata key holding the resolved spec JSON that produced a batch.
pub const SPEC_METADATA_KEY: &str = "pixelfeed.spec";
/// Tensor field metadata key naming the element type as the spec does
/// (`float32`, `float16`, `bfloat16`, `uint8`). Needed for `bfloat16`, whose
/// values are carried as `uint16` because Arrow has no bfloat16 type.
pub const DTYPE_METADATA_KEY: &str = "pixelfeed.dtype";
/// Schema metadata key holding the wire contract version.
pub const VERSION_METADATA_KEY: &str = "pixelfeed.version";
/// The wire contract version this crate describes.
pub const WIRE_VERSION: &str = "1";

/// A batch or schema that breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// The input has no `image` column.
    #[error("input has no column named \"image\" (columns: {0})")]
    MissingImageColumn(String),
    /// The `image` column has a type other than the binary family.
    #[error("column \"image\" must be binary, large_binary or binary_view, got {0}")]
    ImageColumnType(String),
    /// A passthrough column collides with a column the server appends.
    #[error("input column {0:?} collides with an output column the server adds; rename it")]
    ReservedColumn(String),
    /// The extension metadata JSON is malformed.
    #[error("bad arrow.fixed_shape_tensor metadata: {0}")]
    TensorMetadata(String),
}

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

/// The `geometry` output struct: where each row's output came from, so
/// boxes and masks can be mapped back to the source image. All coordinates
/// are in pixels of the source *after* EXIF orientation.
///
/// - `orientation` (uint8): the EXIF orientation applied (1 = none).
/// - `flipped_horizontal`, `flipped_vertical` (bool): the random flips drawn
///   for the row (applied last, to the output).
/// - `scale_y`, `scale_x` (float64): output pixels per source pixel.
/// - `box_top`, `box_left`, `box_height`, `box_width` (float64): the source
///   region the output's full extent covers (before flips); parts outside
///   `0..height` × `0..width` are padding. An output pixel centre
///   `(y + 0.5, x + 0.5)` maps to source
///   `(box_top + (y + 0.5) / scale_y, box_left + (x + 0.5) / scale_x)`.
pub fn geometry_fields() -> Fields {
    let f64_field = |name: &str| Field::new(name, DataType::Float64, false);
    Fields::from(vec![
        Field::new("orientation", DataType::UInt8, false),
        Field::new("flipped_horizontal", DataType::Boolean, false),
        Field::new("flipped_vertical", DataType::Boolean, false),
        f64_field("scale_y"),
        f64_field("scale_x"),
        f64_field("box_top"),
        f64_field("box_left"),
        f64_field("box_height"),
        f64_field("box_width"),
    ])
}

/// Index of the `image` column, checking its type.
pub fn image_column_index(schema: &Schema) -> Result<usize, ContractError> {
    let idx = schema.index_of(columns::IMAGE).map_err(|_| {
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        ContractError::MissingImageColumn(names.join(", "))
    })?;
    match schema.field(idx).data_type() {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Ok(idx),
        other => Err(ContractError::ImageColumnType(other.to_string())),
    }
}

/// The schema of every output batch: the input's columns except `image`, in
/// input order, then `tensor`, `error`, `height`, `width`, `warning`,
/// `geometry` ([`geometry_fields`]). The schema metadata
/// carries the resolved spec and the wire version.
pub fn output_schema(input: &Schema, spec: &TransformSpec) -> Result<Schema, ContractError> {
    let image = image_column_index(input)?;
    let mut fields: Vec<Field> = Vec::with_capacity(input.fields().len() + 3);
    for (i, f) in input.fields().iter().enumerate() {
        if i == image {
            continue;
        }
        if columns::OUTPUT.contains(&f.name().as_str()) {
            return Err(ContractError::ReservedColumn(f.name().clone()));
        }
        fields.push(f.as_ref().clone());
    }
    fields.push(tensor_field(spec));
    fields.push(Field::new(columns::ERROR, DataType::Utf8, true));
    fields.push(Field::new(columns::HEIGHT, DataType::UInt32, true));
    fields.push(Field::new(columns::WIDTH, DataType::UInt32, true));
    fields.push(Field::new(columns::WARNING, DataType::Utf8, true));
    fields.push(Field::new(
        columns::GEOMETRY,
        DataType::Struct(geometry_fields()),
        true,
    ));
    let metadata = HashMap::from([
        (SPEC_METADATA_KEY.to_string(), spec.to_json()),
        (VERSION_METADATA_KEY.to_string(), WIRE_VERSION.to_string()),
    ]);
    Ok(Schema::new_with_metadata(fields, metadata))
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

    #[test]
    fn output_schema_keeps_passthrough_order_and_appends_outputs() {
        let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
        let input = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("image", DataType::LargeBinary, true),
            Field::new("label", DataType::Utf8, true),
        ]);
        let out = output_schema(&input, &spec).unwrap();
        let names: Vec<_> = out.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            ["id", "label", "tensor", "error", "height", "width", "warning", "geometry"]
        );
        assert_eq!(t_dtype(&out), "float32");
        let t = out.field_with_name("tensor").unwrap();
        let meta = FixedShapeTensorMetadata::from_field(t).unwrap().unwrap();
        assert_eq!(meta.shape, vec![3, 224, 224]);
        assert_eq!(meta.dim_names.unwrap(), ["C", "H", "W"]);
        assert!(matches!(t.data_type(), DataType::FixedSizeList(_, n) if *n == 3 * 224 * 224));
        let round = TransformSpec::from_json(out.metadata()[SPEC_METADATA_KEY].as_bytes()).unwrap();
        assert_eq!(round, spec);
    }

    fn t_dtype(schema: &Schema) -> &str {
        &schema.field_with_name("tensor").unwrap().metadata()[DTYPE_METADATA_KEY]
    }

    #[test]
    fn bfloat16_travels_as_marked_uint16() {
        let spec =
            TransformSpec::from_json(br#"{"preset":"imagenet","dtype":"bfloat16"}"#).unwrap();
        let input = Schema::new(vec![Field::new("image", DataType::Binary, true)]);
        let out = output_schema(&input, &spec).unwrap();
        assert_eq!(t_dtype(&out), "bfloat16");
        let t = out.field_with_name("tensor").unwrap();
        assert!(
            matches!(t.data_type(), DataType::FixedSizeList(item, _) if item.data_type() == &DataType::UInt16)
        );
        let half = TransformSpec::from_json(br#"{"preset":"imagenet","dtype":"float16"}"#).unwrap();
        let out = output_schema(&input, &half).unwrap();
        let t = out.field_with_name("tensor").unwrap();
        assert!(
            matches!(t.data_type(), DataType::FixedSizeList(item, _) if item.data_type() == &DataType::Float16)
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
        let no_image = Schema::new(vec![Field::new("x", DataType::Binary, true)]);
        assert!(matches!(
            output_schema(&no_image, &spec),
            Err(ContractError::MissingImageColumn(_))
        ));
        let wrong = Schema::new(vec![Field::new("image", DataType::Utf8, true)]);
        assert!(matches!(
            output_schema(&wrong, &spec),
            Err(ContractError::ImageColumnType(_))
        ));
        let clash = Schema::new(vec![
            Field::new("image", DataType::Binary, true),
            Field::new("error", DataType::Utf8, true),
        ]);
        assert!(matches!(
            output_schema(&clash, &spec),
            Err(ContractError::ReservedColumn(_))
        ));
    }
}
