//! `DoPut` with a PATH `[NAME]` descriptor: stores an uploaded table of
//! images as a dataset, in memory up to a cap, or written to a Parquet
//! file in the spill directory when one is configured
//! (`pixelfeed_data::upload`).

use std::sync::Arc;

use arrow_flight::decode::DecodedPayload;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::FlightData;
use arrow_schema::SchemaRef;
use futures::stream::{BoxStream, StreamExt};
use pixelfeed_data::upload::Upload;
use pixelfeed_data::{check_name, DatasetError};
use serde_json::{json, Value};
use tonic::Status;

use super::dataset_status;
use crate::config::ServiceConfig;
use crate::split::batch_data_bytes;
use crate::stream::{input_decoder, input_status, next_input};
use crate::watch::CallWatch;

/// Runs blocking dataset work (file writes) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DatasetError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(dataset_status)
}

/// `DoPut`: stores the uploaded table as dataset NAME (PATH `[NAME]`
/// descriptor) and answers JSON `{"name", "rows"}`.
pub(crate) async fn do_put(
    config: &ServiceConfig,
    mut input: BoxStream<'static, Result<FlightData, Status>>,
    watch: Arc<CallWatch>,
) -> Result<Value, Status> {
    let first = input
        .next()
        .await
        .transpose()
        .map_err(|status| input_status(FlightError::from(status)))?
        .ok_or_else(|| Status::invalid_argument("DoPut: the client sent no message"))?;
    watch.touch();
    let name = match &first.flight_descriptor {
        Some(d) if d.r#type == DescriptorType::Path as i32 && d.path.len() == 1 => {
            d.path[0].clone()
        }
        _ => {
            return Err(Status::invalid_argument(
                "DoPut needs a PATH descriptor [NAME] naming the dataset to create",
            ))
        }
    };
    check_name(&name).map_err(dataset_status)?;
    let uri = format!("upload:{name}");
    let registry = &config.datasets.registry;
    registry.check_free(&name, &uri).map_err(dataset_status)?;

    let mut decoder = input_decoder(first, input, &watch);
    let mut schema: Option<SchemaRef> = None;
    let datasets = &config.datasets;
    // Only a file this server wrote for an upload of this name is replaced.
    let replace = registry.get(&name).is_ok_and(|d| d.uri() == uri);
    let mut store =
        Some(Upload::new(datasets.spill_dir.as_deref(), &name, replace).map_err(dataset_status)?);
    let mut reservation = datasets.uploads.reserve(&name);
    while let Some(payload) = next_input(&mut decoder, &watch).await {
        let (payload, _charge) = payload?;
        match payload {
            DecodedPayload::None => {}
            DecodedPayload::Schema(s) => {
                pixelfeed_schema::image_column_index(&s)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                if schema.as_ref().is_some_and(|old| old != &s) {
                    return Err(Status::invalid_argument(
                        "the upload's schema changed midway",
                    ));
                }
                schema = Some(s);
            }
            DecodedPayload::RecordBatch(batch) => {
                if let Err(e) = reservation.grow(batch_data_bytes(&batch)) {
                    tracing::info!(name = %name, cap = datasets.uploads.cap(), "upload over the upload budget");
                    return Err(dataset_status(e));
                }
                let mut upload = store
                    .take()
                    .ok_or_else(|| Status::internal("upload lost"))?;
                let upload = {
                    let _busy = watch.busy();
                    blocking(move || upload.push(batch).map(|()| upload)).await?
                };
                store = Some(upload);
            }
        }
    }
    let schema = schema.ok_or_else(|| Status::invalid_argument("the upload carried no schema"))?;
    let upload = store.ok_or_else(|| Status::internal("upload lost"))?;
    let (dataset_name, dataset_uri) = (name.clone(), uri.clone());
    let dataset = {
        let _busy = watch.busy();
        blocking(move || upload.finish(schema, &dataset_name, &dataset_uri)).await?
    };
    let dataset = registry.insert(dataset).map_err(dataset_status)?;
    reservation.commit();
    tracing::info!(name = %name, rows = dataset.rows(), "dataset uploaded");
    Ok(json!({"name": name, "rows": dataset.rows()}))
}
