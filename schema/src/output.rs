//! The output schema: passthrough columns, then the columns the server adds.

use std::collections::HashMap;

use arrow_schema::{DataType, Field, Fields, Schema};

use crate::extension::tensor_field;
use crate::spec::TransformSpec;
use crate::{columns, SPEC_METADATA_KEY, VERSION_METADATA_KEY, WIRE_VERSION};

/// A batch or schema that breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// The input has no `image` column.
    #[error("input has no column named \"image\" (columns: {0})")]
    MissingImageColumn(String),
    /// More than one column is named `image`: which one holds the images
    /// would be a guess.
    #[error("input has {0} columns named \"image\"; exactly one must be")]
    DuplicateImageColumn(usize),
    /// The `image` column has a type other than the binary family.
    #[error("column \"image\" must be binary, large_binary or binary_view, got {0}")]
    ImageColumnType(String),
    /// A passthrough column collides with a column the server appends.
    #[error("input column {} collides with an output column the server adds; rename it", crate::excerpt(.0))]
    ReservedColumn(String),
    /// The extension metadata JSON is malformed.
    #[error("bad arrow.fixed_shape_tensor metadata: {0}")]
    TensorMetadata(String),
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
        ContractError::MissingImageColumn(crate::excerpt(&names.join(", ")))
    })?;
    let count = schema
        .fields()
        .iter()
        .filter(|f| f.name() == columns::IMAGE)
        .count();
    if count > 1 {
        return Err(ContractError::DuplicateImageColumn(count));
    }
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
    use crate::{FixedShapeTensorMetadata, DTYPE_METADATA_KEY};

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
        let twice = Schema::new(vec![
            Field::new("image", DataType::Binary, true),
            Field::new("image", DataType::Binary, true),
        ]);
        assert!(matches!(
            output_schema(&twice, &spec),
            Err(ContractError::DuplicateImageColumn(2))
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
