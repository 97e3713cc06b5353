//! The Flight face of server-side datasets ([`crate::dataset`]):
//! `ListFlights`, `GetFlightInfo`, `DoGet`, `DoPut` and the
//! `register_dataset` action.
//!
//! - `GetFlightInfo` turns a descriptor ([`InfoRequest`]) into the output
//!   schema and K endpoints, one per contiguous shard, each with a
//!   self-describing [`ShardTicket`]; with peers configured the endpoints'
//!   locations rotate over this server and its peers (endpoint i lists
//!   location i mod n first, the others after it as alternatives).
//! - `DoGet` streams a shard through the same pipeline as `DoExchange`
//!   ([`exchange::spawn_pipeline`]): a blocking reader thread feeds the
//!   engine one batch ahead, output is cut by `split_rows`.
//! - `DoPut` with a PATH `[NAME]` descriptor stores an uploaded table of
//!   images as a dataset: in memory up to a cap, or written to a Parquet
//!   file in the spill directory when one is configured.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::{FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use arrow_schema::SchemaRef;
use futures::{StreamExt, TryStreamExt};
use pixelfeed_schema::{output_schema, TransformSpec};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::config::ServiceConfig;
use super::exchange::{self, FlightDataStream, Output, OutputResult};
use super::split::batch_data_bytes;
use super::tickets::{InfoRequest, ShardTicket, TICKET_VERSION};
use crate::dataset::memory::MemorySource;
use crate::dataset::{check_name, Dataset, DatasetError, DatasetRegistry, ReadOptions};

/// Default cap on one in-memory upload (`DoPut` without a spill directory).
pub const DEFAULT_UPLOAD_CAP_BYTES: usize = 1 << 30;

/// How the service offers datasets.
#[derive(Debug, Clone)]
pub struct DatasetsConfig {
    /// The named datasets (shared, registrable while serving).
    pub registry: Arc<DatasetRegistry>,
    /// This server's own URL (`grpc://host:port`) for endpoint locations;
    /// `None` leaves it out (endpoints then name only the peers, or no
    /// location at all, which Flight reads as "this server").
    pub location: Option<String>,
    /// Other servers with the same datasets; endpoints rotate over this
    /// server and them.
    pub peers: Vec<String>,
    /// How dataset reads are cut into engine batches.
    pub read: ReadOptions,
    /// Largest upload kept in memory, in Arrow data bytes.
    pub upload_cap_bytes: usize,
    /// Where uploads are written as Parquet instead of kept in memory.
    pub spill_dir: Option<PathBuf>,
}

impl Default for DatasetsConfig {
    fn default() -> Self {
        Self {
            registry: Arc::new(DatasetRegistry::new()),
            location: None,
            peers: Vec::new(),
            read: ReadOptions::default(),
            upload_cap_bytes: DEFAULT_UPLOAD_CAP_BYTES,
            spill_dir: None,
        }
    }
}

impl DatasetsConfig {
    /// The locations of endpoint `i`: this server and the peers, rotated so
    /// that consecutive endpoints start on consecutive servers.
    fn locations(&self, i: usize) -> Vec<String> {
        let all: Vec<&String> = self.location.iter().chain(&self.peers).collect();
        if all.is_empty() {
            return Vec::new();
        }
        let first = i % all.len();
        all[first..]
            .iter()
            .chain(&all[..first])
            .map(|s| (*s).clone())
            .collect()
    }
}

/// Maps a dataset failure to the status a client sees.
pub fn dataset_status(e: DatasetError) -> Status {
    match &e {
        DatasetError::Unknown(_) => Status::not_found(e.to_string()),
        DatasetError::Conflict { .. } => Status::already_exists(e.to_string()),
        DatasetError::Uri { .. } | DatasetError::Invalid(_) | DatasetError::Parquet { .. } => {
            Status::invalid_argument(e.to_string())
        }
        DatasetError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Status::not_found(e.to_string())
        }
        DatasetError::OutOfRange { .. } => Status::failed_precondition(e.to_string()),
        DatasetError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        DatasetError::Io { .. } | DatasetError::Arrow(_) => Status::internal(e.to_string()),
    }
}

/// `ListFlights`: one FlightInfo per dataset — PATH `[NAME]` descriptor,
/// the source's columns as schema, the row count, and app_metadata JSON
/// `{"name", "uri", "rows"}`; no endpoints (ask `GetFlightInfo`).
pub fn list(config: &DatasetsConfig) -> Result<Vec<FlightInfo>, Status> {
    config
        .registry
        .list()
        .iter()
        .map(|d| {
            Ok(FlightInfo::new()
                .try_with_schema(&d.schema())
                .map_err(|e| Status::internal(e.to_string()))?
                .with_descriptor(FlightDescriptor::new_path(vec![d.name().to_string()]))
                .with_total_records(d.rows() as i64)
                .with_app_metadata(summary(d).to_string()))
        })
        .collect()
}

fn summary(d: &Dataset) -> Value {
    json!({"name": d.name(), "uri": d.uri(), "rows": d.rows()})
}

/// `GetFlightInfo`: the output schema and one endpoint per shard.
pub fn flight_info(
    config: &DatasetsConfig,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    let request = InfoRequest::from_descriptor(&descriptor)?;
    let dataset = config
        .registry
        .get(&request.dataset)
        .map_err(dataset_status)?;
    let schema = output_schema(&dataset.schema(), &request.spec)
        .map_err(|e| Status::invalid_argument(format!("dataset {:?}: {e}", request.dataset)))?;
    let rows = dataset.rows();
    let spec = request.spec.to_value();
    let endpoints = crate::dataset::shard_ranges(rows, request.shards)
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            let ticket = ShardTicket {
                v: TICKET_VERSION,
                dataset: request.dataset.clone(),
                spec: spec.clone(),
                start: range.start,
                end: range.end,
                rows,
            };
            config.locations(i).into_iter().fold(
                FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode())),
                FlightEndpoint::with_location,
            )
        })
        .collect();
    Ok(FlightInfo::new()
        .try_with_schema(&schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_descriptor(descriptor)
        .with_endpoints(endpoints)
        .with_total_records(rows as i64)
        .with_ordered(true))
}

/// `DoGet`: streams one shard's output batches.
pub fn do_get(config: &Arc<ServiceConfig>, ticket: &[u8]) -> Result<FlightDataStream, Status> {
    let (ticket, spec) = ShardTicket::decode(ticket)?;
    let dataset = config
        .datasets
        .registry
        .get(&ticket.dataset)
        .map_err(dataset_status)?;
    if dataset.rows() != ticket.rows {
        return Err(Status::failed_precondition(format!(
            "dataset {:?} has {} rows here, but the ticket was cut from one of {} rows",
            ticket.dataset,
            dataset.rows(),
            ticket.rows
        )));
    }
    let schema: SchemaRef = Arc::new(
        output_schema(&dataset.schema(), &spec)
            .map_err(|e| Status::invalid_argument(e.to_string()))?,
    );
    let config = Arc::clone(config);
    let spec = Arc::new(spec);
    let range = ticket.start..ticket.end;
    Ok(exchange::spawn_pipeline(
        &Arc::clone(&config),
        move |tx| async move {
            if let Err(status) = pump_shard(dataset, range, spec, schema, config, &tx).await {
                tracing::info!(code = ?status.code(), message = status.message(), "DoGet failed");
                let _ = tx.send(Err(status)).await;
            }
        },
    ))
}

/// Reads the shard on a blocking thread (one batch ahead) and runs each
/// batch through the engine into `tx`.
async fn pump_shard(
    dataset: Arc<Dataset>,
    range: std::ops::Range<u64>,
    spec: Arc<TransformSpec>,
    schema: SchemaRef,
    config: Arc<ServiceConfig>,
    tx: &mpsc::Sender<OutputResult>,
) -> Result<(), Status> {
    if tx
        .send(Ok(Output::Schema(Arc::clone(&schema))))
        .await
        .is_err()
    {
        return Ok(());
    }
    let (in_tx, mut in_rx) = mpsc::channel(1);
    let options = config.datasets.read.clone();
    // Rows are keyed by their index in the dataset, so a shard's random
    // draws are the same as in a read of the whole dataset.
    let mut next_row = range.start;
    tokio::task::spawn_blocking(move || match dataset.read(range, &options) {
        Ok(batches) => {
            for batch in batches {
                // A closed channel: the response is gone; stop reading.
                if in_tx.blocking_send(batch).is_err() {
                    return;
                }
            }
        }
        Err(e) => {
            let _ = in_tx.blocking_send(Err(e));
        }
    });
    while let Some(batch) = in_rx.recv().await {
        let batch = batch.map_err(dataset_status)?;
        let first_row = next_row;
        next_row += batch.num_rows() as u64;
        let sent =
            exchange::process_and_send(batch, first_row, &spec, &config, &schema, tx).await?;
        if sent.is_none() {
            return Ok(());
        }
    }
    Ok(())
}

/// `DoPut`: stores the uploaded table as dataset NAME (PATH `[NAME]`
/// descriptor) and answers JSON `{"name", "rows"}`.
pub async fn do_put(
    config: &ServiceConfig,
    mut input: Streaming<FlightData>,
) -> Result<Value, Status> {
    let first = input
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("DoPut: the client sent no message"))?;
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

    let messages = futures::stream::once(std::future::ready(Ok(first)))
        .chain(input.map_err(FlightError::from))
        .try_filter(|m| std::future::ready(!(m.data_header.is_empty() && m.data_body.is_empty())));
    let mut decoder = FlightDataDecoder::new(messages);
    let mut schema: Option<SchemaRef> = None;
    let mut store = Upload::new(&config.datasets, &name);
    while let Some(message) = decoder.next().await {
        let message = message.map_err(|e| match e {
            FlightError::Tonic(status) => *status,
            other => Status::invalid_argument(format!("could not decode the upload: {other}")),
        })?;
        match message.payload {
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
            DecodedPayload::RecordBatch(batch) => store = store.push(batch).await?,
        }
    }
    let schema = schema.ok_or_else(|| Status::invalid_argument("the upload carried no schema"))?;
    let dataset = store.finish(schema, &uri).await?;
    let dataset = registry.insert(dataset).map_err(dataset_status)?;
    tracing::info!(name = %name, rows = dataset.rows(), "dataset uploaded");
    Ok(json!({"name": name, "rows": dataset.rows()}))
}

/// An upload in progress: batches in memory, or a Parquet file being
/// written in the spill directory.
enum Upload {
    Memory {
        batches: Vec<RecordBatch>,
        bytes: usize,
        cap: usize,
        name: String,
    },
    Spill {
        writer: Option<Box<parquet::arrow::ArrowWriter<std::fs::File>>>,
        tmp: PathBuf,
        path: PathBuf,
    },
}

impl Upload {
    fn new(config: &DatasetsConfig, name: &str) -> Self {
        match &config.spill_dir {
            Some(dir) => Upload::Spill {
                writer: None,
                tmp: dir.join(format!(".{name}.parquet.tmp")),
                path: dir.join(format!("{name}.parquet")),
            },
            None => Upload::Memory {
                batches: Vec::new(),
                bytes: 0,
                cap: config.upload_cap_bytes,
                name: name.to_string(),
            },
        }
    }

    async fn push(self, batch: RecordBatch) -> Result<Self, Status> {
        match self {
            Upload::Memory {
                mut batches,
                mut bytes,
                cap,
                name,
            } => {
                bytes += batch_data_bytes(&batch);
                if bytes > cap {
                    tracing::info!(name = %name, cap, "upload over the in-memory cap");
                    return Err(dataset_status(DatasetError::TooLarge { cap }));
                }
                batches.push(batch);
                Ok(Upload::Memory {
                    batches,
                    bytes,
                    cap,
                    name,
                })
            }
            Upload::Spill { writer, tmp, path } => {
                let writer = tokio::task::spawn_blocking(move || {
                    let mut writer = match writer {
                        Some(w) => w,
                        None => Box::new(crate::convert::parquet_writer(&tmp, batch.schema())?),
                    };
                    crate::convert::write_parquet_batch(&mut writer, &batch, &tmp)?;
                    Ok::<_, DatasetError>((writer, tmp))
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(dataset_status)?;
                Ok(Upload::Spill {
                    writer: Some(writer.0),
                    tmp: writer.1,
                    path,
                })
            }
        }
    }

    async fn finish(self, schema: SchemaRef, uri: &str) -> Result<Dataset, Status> {
        let name = uri.trim_start_matches("upload:").to_string();
        match self {
            Upload::Memory { batches, .. } => {
                let source = MemorySource::new(schema, batches).map_err(dataset_status)?;
                Ok(Dataset::from_source(&name, uri, Arc::new(source)))
            }
            Upload::Spill { writer, tmp, path } => {
                let uri = uri.to_string();
                tokio::task::spawn_blocking(move || {
                    let writer = match writer {
                        Some(w) => w,
                        None => Box::new(crate::convert::parquet_writer(&tmp, schema)?),
                    };
                    writer.close().map_err(|source| DatasetError::Parquet {
                        path: tmp.clone(),
                        source,
                    })?;
                    std::fs::rename(&tmp, &path).map_err(|e| DatasetError::io(&path, e))?;
                    let source = crate::dataset::parquet::ParquetSource::open(
                        &path,
                        pixelfeed_schema::columns::IMAGE,
                    )?;
                    Ok(Dataset::from_source(&name, &uri, Arc::new(source)))
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(dataset_status)
            }
        }
    }
}

/// The `register_dataset` action: body JSON `{"name", "uri"}`, answer JSON
/// `{"name", "rows"}`. Blocking (opening may list or scan files).
pub fn register_action(config: &ServiceConfig, body: &[u8]) -> Result<Value, Status> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        name: String,
        uri: String,
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        Status::invalid_argument(format!(
            "register_dataset takes JSON {{\"name\": ..., \"uri\": ...}}: {e}"
        ))
    })?;
    let dataset = config
        .datasets
        .registry
        .register(&body.name, &body.uri)
        .map_err(dataset_status)?;
    tracing::info!(name = %body.name, uri = %body.uri, rows = dataset.rows(), "dataset registered");
    Ok(json!({"name": dataset.name(), "rows": dataset.rows()}))
}

/// The `datasets` action: JSON list of `{"name", "uri", "rows"}`.
pub fn list_action(config: &ServiceConfig, _: &[u8]) -> Result<Value, Status> {
    Ok(Value::Array(
        config
            .datasets
            .registry
            .list()
            .iter()
            .map(|d| summary(d))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_rotate_over_self_and_peers() {
        let config = DatasetsConfig {
            location: Some("grpc://a".into()),
            peers: vec!["grpc://b".into(), "grpc://c".into()],
            ..DatasetsConfig::default()
        };
        assert_eq!(config.locations(0), ["grpc://a", "grpc://b", "grpc://c"]);
        assert_eq!(config.locations(1), ["grpc://b", "grpc://c", "grpc://a"]);
        assert_eq!(config.locations(5), ["grpc://c", "grpc://a", "grpc://b"]);
        assert!(DatasetsConfig::default().locations(3).is_empty());
    }
}
