//! The data path every streaming RPC shares: input messages decoded,
//! batches through the engine on the blocking pool, output cut into
//! bounded messages, errors as statuses. `DoExchange` and `DoGet` produce
//! into [`spawn_pipeline`]; `DoExchange` and `DoPut` read their input with
//! [`input_decoder`] and [`input_status`].
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
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::FlightData;
use arrow_schema::{DataType, SchemaRef};
use futures::stream::{self, BoxStream, Stream, StreamExt, TryStreamExt};
use futures::FutureExt as _;
use pixelfeed_engine::{self as engine, EngineError};
use pixelfeed_schema::{excerpt, TransformSpec};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument as _;

use crate::budget::Charge;
use crate::config::ServiceConfig;
use crate::metrics::{self, Metrics};
use crate::split::split_rows;
use crate::watch::{CallWatch, Unsent};

/// Processed batches allowed to wait between the engine and the sender.
pub const PIPELINE_DEPTH: usize = 2;

/// The response of one exchange, as tonic wants it.
pub type FlightDataStream = BoxStream<'static, Result<FlightData, Status>>;

/// What the producer hands the response stream.
pub(crate) enum Output {
    /// The output schema, sent once, first.
    Schema(SchemaRef),
    /// One processed input batch, whole, when it left the engine (the
    /// start of its `send` stage), and the mark that the client is owed it.
    Batch(RecordBatch, Instant, Unsent),
}

/// One item of the producer-to-sender channel.
pub(crate) type OutputResult = Result<Output, Status>;

/// Runs `pump` (given the sending end of a [`PIPELINE_DEPTH`]-deep
/// channel) as a task in the current (call) span and returns the response
/// stream that sends what it produces, cut into messages of about
/// `config.target_message_bytes` and timed into `config.metrics`. The pump
/// must send [`Output::Schema`] first; its error, if any, ends the stream
/// as the call's status. `what` names the RPC in logs.
pub(crate) fn spawn_pipeline<F>(
    config: &ServiceConfig,
    what: &'static str,
    watch: Arc<CallWatch>,
    pump: impl FnOnce(mpsc::Sender<OutputResult>) -> F,
) -> FlightDataStream
where
    F: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
    let errors = tx.clone();
    let pumped = pump(tx);
    let producer = tokio::spawn(
        async move {
            // A panic below the handlers (a third-party decoder's) ends the
            // call with an error, never with OK and rows missing.
            let outcome = tokio::select! {
                outcome = AssertUnwindSafe(pumped).catch_unwind() => outcome,
                () = watch.cancelled() => Ok(Err(watch.status())),
            };
            let status = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(status)) => status,
                Err(panic) => {
                    tracing::error!(panic = panic_text(&*panic), "{what} producer panicked");
                    Status::internal(format!("{what} failed: an internal error ended the call"))
                }
            };
            tracing::info!(code = ?status.code(), message = status.message(), "{what} failed");
            // A closed channel means the client went away; nobody to tell.
            let _ = errors.send(Err(status)).await;
        }
        .in_current_span(),
    );
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

/// A call's position in its output stream: the key of the next row (its
/// index in the call's stream, or in the dataset for a shard) and what was
/// sent so far, recorded in the call's span.
#[derive(Debug)]
pub(crate) struct Tally {
    next_row: u64,
    batches: usize,
    rows: usize,
    errors: usize,
}

impl Tally {
    /// A stream whose first row has key `first_row`.
    pub(crate) fn starting_at(first_row: u64) -> Self {
        Self {
            next_row: first_row,
            batches: 0,
            rows: 0,
            errors: 0,
        }
    }
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

/// Runs the engine on one input batch (its rows keyed from
/// `tally`'s next row, which keys the random draws), gives the output the
/// announced `schema`, records it in the metrics and the call span, and
/// sends it. `Ok(false)` when the response stream is gone (the client
/// disconnected): the caller stops. The input's budget `charge` is given
/// back when the engine is done with the batch, before the send waits on
/// the client (see [`crate::budget`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn process_and_send(
    batch: RecordBatch,
    charge: Charge,
    tally: &mut Tally,
    spec: &Arc<TransformSpec>,
    config: &Arc<ServiceConfig>,
    schema: &SchemaRef,
    watch: &Arc<CallWatch>,
    tx: &mpsc::Sender<OutputResult>,
) -> Result<bool, Status> {
    let input_bytes = metrics::encoded_bytes(&batch);
    // Views (and dictionaries) let a small message name the same bytes many
    // times; the engine's work is bounded by what a message could carry.
    let limit = config.limits.max_batch_image_bytes;
    if input_bytes > limit as u64 {
        return Err(Status::resource_exhausted(format!(
            "an input batch's image column holds {input_bytes} bytes (views sharing data count \
             each time), over the {limit}-byte limit per batch (--max-message-bytes)"
        )));
    }
    let started = Instant::now();
    let rows = batch.num_rows();
    let first_row = tally.next_row;
    let busy = watch.busy();
    let (out, report) = process(batch, first_row, Arc::clone(spec), Arc::clone(config)).await?;
    drop(busy);
    drop(charge);
    let out = conform(out, schema)?;
    config
        .metrics
        .record_batch(input_bytes, &out, &report, started.elapsed());
    tally.next_row += rows as u64;
    tally.batches += 1;
    tally.rows += rows;
    tally.errors += report.errors.iter().flatten().count();
    let span = tracing::Span::current();
    span.record("rows", tally.rows);
    span.record("errors", tally.errors);
    let sent = tx
        .send(Ok(Output::Batch(
            out,
            Instant::now(),
            watch.unsent_output(),
        )))
        .await
        .is_ok();
    if !sent {
        tracing::debug!(
            batches = tally.batches,
            rows = tally.rows,
            "client went away mid-stream"
        );
    }
    Ok(sent)
}

/// The spec this server runs for `spec` (its JPEG decoder resolved, so the
/// output schema and tickets name the decoder), or, before any schema or
/// ticket is handed out, the refusal of a spec this build cannot serve (a
/// decoder or a draft it lacks).
pub(crate) fn servable(spec: &TransformSpec) -> Result<TransformSpec, Status> {
    engine::resolve_spec(spec).map_err(engine_status)
}

/// Records the spec in the call span (as a short hash) and the debug log.
pub(crate) fn record_spec(spec: &TransformSpec) {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let json = spec.to_json();
    json.hash(&mut hasher);
    let spec_hash = format!("{:016x}", hasher.finish());
    tracing::Span::current().record("spec_hash", &spec_hash);
    tracing::debug!(spec = %json, spec_hash, "stream started");
}

/// Runs the engine on one batch on a blocking thread: it is CPU-heavy and
/// blocks (rayon inside, and an allocator that may wait for a free block),
/// so it must not run on the async runtime's workers.
async fn process(
    batch: RecordBatch,
    first_row: u64,
    spec: Arc<TransformSpec>,
    config: Arc<ServiceConfig>,
) -> Result<(RecordBatch, engine::BatchReport), Status> {
    let rows = batch.num_rows();
    let _queued = config.metrics.engine_batch();
    let joined = tokio::task::spawn_blocking(move || {
        engine::process_batch_timed(
            &batch,
            &spec,
            &config.engine,
            config.allocator.as_ref(),
            first_row,
        )
    })
    .await;
    match joined {
        Ok(Ok((out, report))) if out.num_rows() == rows => Ok((out, report)),
        Ok(Ok((out, _))) => Err(Status::internal(format!(
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

/// A decoder over a call's input messages: `first` (already read, for its
/// descriptor) then the rest. Messages with neither header nor body are
/// dropped: pyarrow opens a stream with one that carries only the
/// descriptor, which arrow-rs's decoder would reject.
pub(crate) fn input_decoder<S>(
    first: FlightData,
    rest: S,
    watch: &Arc<CallWatch>,
) -> FlightDataDecoder
where
    S: Stream<Item = Result<FlightData, Status>> + Send + 'static,
{
    // Each message tonic yields is counted, so the budget charges handed on
    // with a payload are exactly those of the messages it was decoded from.
    watch.message_decoded();
    let watch = Arc::clone(watch);
    let messages = stream::once(ready(Ok(first)))
        .chain(
            rest.inspect_ok(move |_| watch.message_decoded())
                .map_err(FlightError::from),
        )
        .try_filter(|m| ready(!(m.data_header.is_empty() && m.data_body.is_empty())));
    FlightDataDecoder::new(messages)
}

/// The next decoded input message, its errors mapped by [`input_status`].
/// A panic in the IPC decoder (arrow-ipc asserts on some malformed
/// headers) becomes `INVALID_ARGUMENT`, never a silently ended call.
/// Counts as the call's progress.
///
/// With the message comes its charge on the input budget
/// ([`crate::budget`]): hold it until the message is processed.
pub(crate) async fn next_input(
    decoder: &mut FlightDataDecoder,
    watch: &CallWatch,
) -> Option<Result<(DecodedPayload, Charge), Status>> {
    let next = AssertUnwindSafe(decoder.next()).catch_unwind().await;
    watch.touch();
    let charge = watch.input_charge();
    match next {
        Ok(None) => None,
        Ok(Some(Ok(message))) => Some(check_payload(message.payload).map(|p| (p, charge))),
        Ok(Some(Err(e))) => Some(Err(input_status(e))),
        Err(panic) => Some(Err(Status::invalid_argument(format!(
            "could not decode the input stream: malformed IPC message ({})",
            excerpt(panic_text(&*panic))
        )))),
    }
}

/// Refuses what the contract does not take in: dictionary-encoded columns.
/// Passthrough columns go back as they came, and a dictionary would have to
/// be expanded row by row (one value of V bytes named by N rows becomes N×V
/// bytes) or resent with every output message.
fn check_payload(payload: DecodedPayload) -> Result<DecodedPayload, Status> {
    if let DecodedPayload::Schema(schema) = &payload {
        if let Some(field) = schema
            .fields()
            .iter()
            .find(|f| has_dictionary(f.data_type()))
        {
            return Err(Status::invalid_argument(format!(
                "column {} is dictionary-encoded; pixelfeed passes columns through unchanged and \
                 takes no dictionaries: send it decoded (pyarrow: column.dictionary_decode())",
                excerpt(field.name())
            )));
        }
    }
    Ok(payload)
}

/// Whether `t` is or contains a dictionary type.
fn has_dictionary(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(..) => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => has_dictionary(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
        DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_dictionary(f.data_type())),
        DataType::RunEndEncoded(a, b) => {
            has_dictionary(a.data_type()) || has_dictionary(b.data_type())
        }
        _ => false,
    }
}

/// A panic payload's text.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// Maps an input-side failure: a transport status passes through (it may
/// be the client cancelling, or a message over the size limit); anything
/// else is a message the client encoded wrongly.
pub(crate) fn input_status(e: FlightError) -> Status {
    match e {
        // tonic reports a message over the size limit as OUT_OF_RANGE; to
        // the client it is a server limit like the others.
        FlightError::Tonic(status) if status.code() == tonic::Code::OutOfRange => {
            Status::resource_exhausted(format!("{} (--max-message-bytes)", status.message()))
        }
        // A frame tonic could not decode (truncated, bad protobuf) is the
        // client's mistake, not the server's.
        FlightError::Tonic(status)
            if matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown) =>
        {
            Status::invalid_argument(format!(
                "could not decode the input stream: {}",
                status.message()
            ))
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
    metrics: Arc<Metrics>,
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
                    Ok(Output::Batch(batch, produced, unsent)) => {
                        let slices = split_rows(&batch, target).into_iter().map(Ok);
                        // Polled once the encoder wants the next batch, i.e.
                        // when every message of this one was handed on
                        // (tonic polls only as the client's window allows).
                        let metrics = Arc::clone(&metrics);
                        let sent = stream::once(async move {
                            metrics.record_send(produced.elapsed());
                            drop(unsent);
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
                // Dictionaries (from server-side datasets; clients cannot
                // send them) go as dictionaries, never expanded row by row.
                FlightDataEncoderBuilder::new()
                    .with_dictionary_handling(DictionaryHandling::Resend)
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
    fn engine_errors_map_to_contract_codes() {
        let alloc = engine_status(EngineError::Allocation("pool empty".into()));
        assert_eq!(alloc.code(), tonic::Code::ResourceExhausted);
        let contract = engine_status(EngineError::Contract(
            pixelfeed_schema::ContractError::MissingImageColumn("x".into()),
        ));
        assert_eq!(contract.code(), tonic::Code::InvalidArgument);
    }
}
