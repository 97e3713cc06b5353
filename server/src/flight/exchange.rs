//! `DoExchange`: the spec in the first message's descriptor, input batches
//! in, tensor batches out.
//!
//! Two halves joined by a bounded channel:
//!
//! - the *producer* (a spawned task) decodes input messages and runs the
//!   engine on each batch on a blocking thread, one batch at a time, and
//!   pushes the output into the channel;
//! - the *response stream* (polled by tonic as the client's HTTP/2 window
//!   allows) takes outputs from the channel in order, cuts each into
//!   messages of about `target_message_bytes` and encodes them.
//!
//! So batch N+1 is decoded and processed while batch N is being sent, at
//! most [`PIPELINE_DEPTH`] processed batches wait in between, and a client
//! that stops reading stalls its own producer (and, through HTTP/2 flow
//! control, its own upload) instead of growing server memory.

use std::future::ready;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::{FlightData, FlightDescriptor};
use arrow_schema::SchemaRef;
use futures::stream::{self, BoxStream, Stream, StreamExt, TryStreamExt};
use pixelfeed_schema::{output_schema, TransformSpec};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::Instrument as _;

use super::config::ServiceConfig;
use super::metrics;
use super::split::split_rows;
use crate::engine::{self, EngineError};

/// Processed batches allowed to wait between the engine and the sender.
pub const PIPELINE_DEPTH: usize = 2;

/// The response of one exchange, as tonic wants it.
pub type FlightDataStream = BoxStream<'static, Result<FlightData, Status>>;

/// What the producer hands the response stream.
pub(super) enum Output {
    /// The output schema, sent once, first.
    Schema(SchemaRef),
    /// One processed input batch, whole, and when it left the engine (the
    /// start of its `send` stage).
    Batch(RecordBatch, Instant),
}

/// One item of the producer-to-sender channel.
pub(super) type OutputResult = Result<Output, Status>;

/// Starts an exchange: reads the first message, validates the spec its
/// descriptor carries, and returns the response stream.
///
/// Errors in the descriptor or spec are returned here, so the client's call
/// itself fails; errors later in the stream (bad schema, engine failures)
/// end the response stream with that status.
pub async fn start(
    mut input: Streaming<FlightData>,
    config: Arc<ServiceConfig>,
) -> Result<FlightDataStream, Status> {
    let first = input.message().await?.ok_or_else(|| {
        Status::invalid_argument(
            "DoExchange: the client sent no message; the first must carry a CMD \
             flight descriptor holding the transform spec JSON",
        )
    })?;
    let spec = Arc::new(spec_from_descriptor(first.flight_descriptor.as_ref())?);
    let spec_hash = spec_hash(&spec);
    tracing::Span::current().record("spec_hash", &spec_hash);
    tracing::debug!(spec = %spec.to_json(), spec_hash, "exchange started");

    // pyarrow opens an exchange with a message that carries only the
    // descriptor (no IPC header, no body); arrow-rs's decoder rejects such
    // a message, so drop every message without data. The descriptor has
    // already been read from the first one above.
    let messages = stream::once(ready(Ok(first)))
        .chain(input.map_err(FlightError::from))
        .try_filter(|m| ready(!(m.data_header.is_empty() && m.data_body.is_empty())));
    let decoder = FlightDataDecoder::new(messages);

    Ok(spawn_pipeline(&Arc::clone(&config), |tx| {
        produce(decoder, spec, config, tx).in_current_span()
    }))
}

/// Runs `producer` (given the sending end of a [`PIPELINE_DEPTH`]-deep
/// channel) as a task and returns the response stream that sends what it
/// produces, cut into messages of about `config.target_message_bytes` and
/// timed into `config.metrics`. The producer must send [`Output::Schema`]
/// first. Shared by `DoExchange` and `DoGet`.
pub(super) fn spawn_pipeline<F>(
    config: &ServiceConfig,
    producer: impl FnOnce(mpsc::Sender<OutputResult>) -> F,
) -> FlightDataStream
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
    let producer = tokio::spawn(producer(tx));
    // When tonic drops the response (the client hung up or cancelled), stop
    // the producer at once rather than at its next send. An engine call
    // already running finishes on its blocking thread and its output is
    // dropped.
    AbortOnDrop {
        stream: respond(rx, config.target_message_bytes, Arc::clone(&config.metrics)),
        producer: producer.abort_handle(),
    }
    .boxed()
}

/// A response stream that aborts its producer task when dropped.
struct AbortOnDrop {
    stream: FlightDataStream,
    producer: AbortHandle,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.producer.abort();
    }
}

impl Stream for AbortOnDrop {
    type Item = Result<FlightData, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

/// Parses the transform spec out of the first message's descriptor.
fn spec_from_descriptor(descriptor: Option<&FlightDescriptor>) -> Result<TransformSpec, Status> {
    let descriptor = descriptor.ok_or_else(|| {
        Status::invalid_argument(
            "the first DoExchange message must carry a flight descriptor of type CMD \
             holding the transform spec JSON; it had none",
        )
    })?;
    if descriptor.r#type != DescriptorType::Cmd as i32 {
        let kind = DescriptorType::try_from(descriptor.r#type)
            .map(|t| t.as_str_name())
            .unwrap_or("an unknown type");
        return Err(Status::invalid_argument(format!(
            "the DoExchange flight descriptor must be of type CMD holding the transform \
             spec JSON, got {kind}"
        )));
    }
    TransformSpec::from_json(&descriptor.cmd)
        .map_err(|e| Status::invalid_argument(format!("invalid transform spec: {e}")))
}

/// A short, stable name for a spec in logs: 16 hex digits of a hash of its
/// canonical JSON.
fn spec_hash(spec: &TransformSpec) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    spec.to_json().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Runs the producer half, reporting its error (if any) as the last item.
async fn produce(
    decoder: FlightDataDecoder,
    spec: Arc<TransformSpec>,
    config: Arc<ServiceConfig>,
    tx: mpsc::Sender<OutputResult>,
) {
    if let Err(status) = pump(decoder, spec, config, &tx).await {
        tracing::info!(code = ?status.code(), message = status.message(), "exchange failed");
        // A closed channel means the client went away; nobody to tell.
        let _ = tx.send(Err(status)).await;
    }
}

/// Decodes the input and processes it batch by batch into `tx`. Returns
/// `Ok` early when the response stream is gone (client disconnected).
async fn pump(
    mut decoder: FlightDataDecoder,
    spec: Arc<TransformSpec>,
    config: Arc<ServiceConfig>,
    tx: &mpsc::Sender<OutputResult>,
) -> Result<(), Status> {
    let mut schema: Option<SchemaRef> = None;
    let (mut batches, mut rows, mut errors) = (0usize, 0usize, 0usize);
    while let Some(message) = decoder.next().await {
        match message.map_err(input_status)?.payload {
            // A message with only app_metadata: nothing to process.
            DecodedPayload::None => {}
            DecodedPayload::Schema(input) => {
                let out = Arc::new(
                    output_schema(&input, &spec)
                        .map_err(|e| Status::invalid_argument(e.to_string()))?,
                );
                match &schema {
                    None => {
                        schema = Some(Arc::clone(&out));
                        if tx.send(Ok(Output::Schema(out))).await.is_err() {
                            return Ok(());
                        }
                    }
                    // A repeated, identical schema is harmless.
                    Some(current) if current == &out => {}
                    Some(_) => {
                        return Err(Status::invalid_argument(
                            "the input schema changed mid-exchange; one exchange carries \
                             one schema, open another for a different one",
                        ))
                    }
                }
            }
            DecodedPayload::RecordBatch(batch) => {
                // The decoder rejects a batch before any schema, so this
                // only guards against that changing.
                let Some(schema) = &schema else {
                    return Err(Status::invalid_argument(
                        "received a record batch before the schema",
                    ));
                };
                if batch.num_rows() == 0 {
                    continue;
                }
                let max_rows = config.limits.max_rows_per_batch;
                if batch.num_rows() > max_rows {
                    return Err(Status::resource_exhausted(format!(
                        "an input batch of {} rows is over the server's limit of {max_rows} \
                         rows per batch (--max-rows-per-batch); send smaller batches",
                        batch.num_rows()
                    )));
                }
                let first_row = rows as u64;
                batches += 1;
                rows += batch.num_rows();
                let sent = process_and_send(batch, first_row, &spec, &config, schema, tx).await?;
                let span = tracing::Span::current();
                span.record("rows", rows);
                let Some(error_rows) = sent else {
                    tracing::debug!(batches, rows, "client went away mid-exchange");
                    return Ok(());
                };
                errors += error_rows;
                span.record("errors", errors);
            }
        }
    }
    tracing::debug!(batches, rows, "exchange input complete");
    Ok(())
}

/// Runs the engine on one input batch (whose first row is row `first_row`
/// of the stream, which keys the random draws), gives the output the
/// announced `schema`, records it in the metrics and sends it. Returns the
/// number of error rows sent, or `None` when the response stream is gone
/// (the client disconnected).
pub(super) async fn process_and_send(
    batch: RecordBatch,
    first_row: u64,
    spec: &Arc<TransformSpec>,
    config: &Arc<ServiceConfig>,
    schema: &SchemaRef,
    tx: &mpsc::Sender<OutputResult>,
) -> Result<Option<usize>, Status> {
    let input_bytes = metrics::encoded_bytes(&batch);
    let started = Instant::now();
    let out = process(batch, first_row, Arc::clone(spec), Arc::clone(config)).await?;
    let out = conform(out, schema)?;
    config
        .metrics
        .record_batch(input_bytes, &out, started.elapsed());
    let error_rows = out
        .column_by_name(pixelfeed_schema::columns::ERROR)
        .map_or(0, |c| c.len() - c.null_count());
    Ok(tx
        .send(Ok(Output::Batch(out, Instant::now())))
        .await
        .is_ok()
        .then_some(error_rows))
}

/// Runs the engine on one batch on a blocking thread: it is CPU-heavy and
/// blocks (rayon inside, and an allocator that may wait for a free block),
/// so it must not run on the async runtime's workers.
async fn process(
    batch: RecordBatch,
    first_row: u64,
    spec: Arc<TransformSpec>,
    config: Arc<ServiceConfig>,
) -> Result<RecordBatch, Status> {
    let rows = batch.num_rows();
    let _queued = config.metrics.engine_batch();
    let joined = tokio::task::spawn_blocking(move || {
        let (out, stages) = engine::process_batch_timed(
            &batch,
            &spec,
            &config.engine,
            config.allocator.as_ref(),
            first_row,
        )?;
        config.metrics.record_stages(&stages);
        Ok(out)
    })
    .await;
    match joined {
        Ok(Ok(out)) if out.num_rows() == rows => Ok(out),
        Ok(Ok(out)) => Err(Status::internal(format!(
            "the engine returned {} rows for an input of {rows}",
            out.num_rows()
        ))),
        Ok(Err(e)) => Err(engine_status(e)),
        // A panic escaping the engine: report it, keep the server up.
        Err(join) => {
            tracing::error!(error = %join, rows, "engine task failed");
            Err(Status::internal(format!(
                "the engine failed on a batch of {rows} rows: {join}"
            )))
        }
    }
}

/// Maps a whole-batch engine failure to the status the contract gives it.
pub fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::Contract(c) => Status::invalid_argument(c.to_string()),
        EngineError::Unsupported(_) => Status::invalid_argument(e.to_string()),
        EngineError::Allocation(_) => Status::resource_exhausted(e.to_string()),
        EngineError::Arrow(_) => Status::internal(e.to_string()),
    }
}

/// Gives an engine output the exact schema announced to the client (the
/// encoder rejects batches whose schema differs in any way, metadata
/// included).
fn conform(out: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, Status> {
    if out.schema_ref() == schema {
        return Ok(out);
    }
    out.with_schema(Arc::clone(schema)).map_err(|e| {
        Status::internal(format!(
            "the engine's output does not match the announced schema: {e}"
        ))
    })
}

/// Maps an input-side failure: a transport status passes through (it may
/// be the client cancelling, or a message over the size limit); anything
/// else is a message the client encoded wrongly.
fn input_status(e: FlightError) -> Status {
    match e {
        // tonic reports a message over the size limit as OUT_OF_RANGE; to
        // the client it is a server limit like the others.
        FlightError::Tonic(status) if status.code() == tonic::Code::OutOfRange => {
            Status::resource_exhausted(format!("{} (--max-message-bytes)", status.message()))
        }
        FlightError::Tonic(status) => *status,
        other => Status::invalid_argument(format!("could not decode the input stream: {other}")),
    }
}

/// The response half: the schema, then each output batch in order, cut into
/// messages of about `target` bytes.
fn respond(
    mut rx: mpsc::Receiver<OutputResult>,
    target: usize,
    metrics: Arc<metrics::Metrics>,
) -> FlightDataStream {
    let head = async move {
        match rx.recv().await {
            // The input ended without a schema: nothing to describe.
            None => stream::empty().boxed(),
            Some(Err(status)) => stream::once(ready(Err(status))).boxed(),
            Some(Ok(Output::Batch(..))) => stream::once(ready(Err(Status::internal(
                "a batch was produced before the schema",
            ))))
            .boxed(),
            Some(Ok(Output::Schema(schema))) => {
                let batches = ReceiverStream::new(rx).flat_map(move |item| match item {
                    Ok(Output::Batch(batch, produced)) => {
                        let slices = split_rows(&batch, target).into_iter().map(Ok);
                        // Polled once the encoder wants the next batch, i.e.
                        // when every message of this one was handed on
                        // (tonic polls only as the client's window allows).
                        let metrics = Arc::clone(&metrics);
                        let sent = stream::once(async move {
                            metrics.record_send(produced.elapsed());
                        })
                        .filter_map(|()| ready(None));
                        stream::iter(slices).chain(sent).boxed()
                    }
                    Ok(Output::Schema(_)) => stream::once(ready(Err(FlightError::from(
                        Status::internal("a second schema was produced"),
                    ))))
                    .boxed(),
                    Err(status) => stream::once(ready(Err(FlightError::from(status)))).boxed(),
                });
                // The schema is given up front so that it is sent even when
                // no batch follows. The encoder's own splitting is off
                // (`usize::MAX`): `split_rows` has already sized the slices.
                FlightDataEncoderBuilder::new()
                    .with_schema(schema)
                    .with_max_flight_data_size(usize::MAX)
                    .build(batches)
                    .map_err(Status::from)
                    .boxed()
            }
        }
    };
    stream::once(head).flatten().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_must_be_a_cmd_with_a_valid_spec() {
        let missing = spec_from_descriptor(None).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::InvalidArgument);

        let path = FlightDescriptor::new_path(vec!["x".into()]);
        let err = spec_from_descriptor(Some(&path)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("PATH"), "{}", err.message());

        let bad = FlightDescriptor::new_cmd(
            r#"{"preset":"imagenet","crop":{"mode":"center","height":300,"width":224}}"#,
        );
        let err = spec_from_descriptor(Some(&bad)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("crop.height"), "{}", err.message());

        let good = FlightDescriptor::new_cmd(r#"{"preset":"imagenet"}"#);
        assert_eq!(
            spec_from_descriptor(Some(&good)).unwrap().shape(),
            [3, 224, 224]
        );
    }

    #[test]
    fn engine_errors_map_to_contract_codes() {
        let alloc = engine_status(EngineError::Allocation("pool empty".into()));
        assert_eq!(alloc.code(), tonic::Code::ResourceExhausted);
        let contract = engine_status(EngineError::Contract(
            pixelfeed_schema::ContractError::MissingImageColumn("x".into()),
        ));
        assert_eq!(contract.code(), tonic::Code::InvalidArgument);
    }
}
