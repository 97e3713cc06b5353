//! Several `DoExchange` calls at once, outputs in input order: the Rust
//! form of the Python client's `preprocess(..., streams=K)`.
//!
//! One call keeps the server's cores busy only while its pipeline is full;
//! between a call's batches (upload, the tail of one batch, the first rows
//! of the next) cores idle. K calls keep K batches in the server at once.
//! Input batch `i` goes to call `i % K`; each call answers its batches in
//! its own order, so the output is read back call by call, as many rows
//! from call `i % K` as batch `i` had.
//!
//! Random draws are keyed by a row's position in its call, which differs
//! between calls, so with K > 1 every row carries its position in the whole
//! input as an explicit `seed` column (added here and taken off the
//! output; or the caller's own integer `seed` column, its null cells filled
//! with positions, sent as int64 and given back unchanged in the output):
//! the bytes are then those of one call, as in the Python client.

use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array as _, ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::channel::mpsc;
use futures::stream::{BoxStream, Stream, StreamExt};
use futures::SinkExt as _;
use pixelfeed_schema::columns;
use std::future::Future as _;

use crate::client::ExchangeStream;
use crate::{Client, ClientError, IntoSpecJson};

/// Default number of calls for [`Client::exchange_ordered`] when the server
/// reports `threads` engine threads: `min(4, threads)`. Four calls already
/// overlap every gap of one call; more only hold more memory in the
/// server. (The Python client takes at least two, as each of its calls
/// keeps one batch in flight; these calls read while they write.)
pub fn default_streams(threads: usize) -> usize {
    threads.clamp(1, 4)
}

/// The output of [`Client::exchange_ordered`]: every input batch's output
/// rows, in input order, possibly cut into several batches as the server
/// sends them.
///
/// Ends with one error item when any call fails (its status) or breaks the
/// contract; batches before it are valid. Dropping it cancels every call:
/// their uploads stop and the server frees their blocks.
pub struct OrderedStream {
    calls: Vec<ExchangeStream>,
    /// Each input batch sent, in input order.
    order: mpsc::Receiver<Result<Sent, ClientError>>,
    /// The batch being read.
    current: Option<Sent>,
    /// The task dealing input batches to the calls (aborted on drop).
    dealer: tokio::task::JoinHandle<()>,
    done: bool,
}

impl std::fmt::Debug for OrderedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedStream")
            .field("calls", &self.calls.len())
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl Drop for OrderedStream {
    fn drop(&mut self) {
        self.dealer.abort();
    }
}

/// One input batch on its way: where it went and how to read its output.
#[derive(Debug)]
struct Sent {
    call: usize,
    rows: usize,
    /// Rows of its output read so far.
    read: usize,
    fixup: Fixup,
}

/// How an output piece is given back the caller's columns.
#[derive(Debug, Clone)]
enum Fixup {
    /// Sent as it came.
    None,
    /// A `seed` column of positions was added: take it off.
    DropSeed,
    /// The caller's `seed` column (this one, whole batch) was sent as int64
    /// keys: put it back.
    RestoreSeed(ArrayRef),
}

/// How the input keys its random draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeedColumn {
    /// No `seed` column: rows are keyed by position.
    Missing,
    /// An integer `seed` column the server reads (int32/int64/uint32/uint64).
    Integer(usize),
}

impl SeedColumn {
    fn of(schema: &Schema) -> Result<Self, ClientError> {
        let Ok(index) = schema.index_of(columns::SEED) else {
            return Ok(Self::Missing);
        };
        match schema.field(index).data_type() {
            DataType::Int32 | DataType::Int64 | DataType::UInt32 | DataType::UInt64 => {
                Ok(Self::Integer(index))
            }
            other => Err(ClientError::InvalidArgument(format!(
                "a '{}' column must be int32/int64/uint32/uint64 to run on several streams, not \
                 {other}",
                columns::SEED
            ))),
        }
    }
}

/// The keys the server derives from `column` (its value, two's complement
/// for signed types, as the engine reads it), null cells replaced by the
/// row's position in the whole input.
fn seed_keys(column: &ArrayRef, first_row: u64) -> Int64Array {
    macro_rules! keys {
        ($t:ty) => {{
            let a = column.as_primitive::<$t>();
            (0..a.len())
                .map(|i| {
                    let key = if a.is_valid(i) {
                        a.value(i) as u64
                    } else {
                        first_row + i as u64
                    };
                    Some(key as i64)
                })
                .collect()
        }};
    }
    match column.data_type() {
        DataType::Int32 => keys!(Int32Type),
        DataType::Int64 => keys!(Int64Type),
        DataType::UInt32 => keys!(UInt32Type),
        _ => keys!(UInt64Type),
    }
}

/// The schema the calls are opened with: `schema`, with an int64 `seed`
/// column when several calls must key rows by input position.
fn sent_schema(schema: &Schema, seed: SeedColumn, streams: usize) -> Schema {
    let key = Field::new(columns::SEED, DataType::Int64, false);
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    match seed {
        _ if streams == 1 => return schema.clone(),
        SeedColumn::Missing => fields.push(Arc::new(key)),
        SeedColumn::Integer(i) => fields[i] = Arc::new(key),
    }
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// `batch` as sent (see [`sent_schema`]) and how to fix its output.
fn keyed(
    batch: RecordBatch,
    first_row: u64,
    seed: SeedColumn,
    streams: usize,
    sent: &SchemaRef,
) -> Result<(RecordBatch, Fixup), ClientError> {
    let positions = |n: usize| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            (first_row..first_row + n as u64).map(|p| p as i64),
        ))
    };
    let (mut columns, fixup) = match seed {
        _ if streams == 1 => return Ok((batch, Fixup::None)),
        SeedColumn::Missing => {
            let mut columns = batch.columns().to_vec();
            columns.push(positions(batch.num_rows()));
            (columns, Fixup::DropSeed)
        }
        SeedColumn::Integer(i) => {
            let original = Arc::clone(batch.column(i));
            let mut columns = batch.columns().to_vec();
            columns[i] = Arc::new(seed_keys(&original, first_row));
            (columns, Fixup::RestoreSeed(original))
        }
    };
    columns.shrink_to_fit();
    let batch = RecordBatch::try_new(Arc::clone(sent), columns)
        .map_err(|e| ClientError::InvalidArgument(format!("input batch: {e}")))?;
    Ok((batch, fixup))
}

impl Fixup {
    /// `piece` (rows `offset..` of its batch's output) with the caller's
    /// columns back.
    fn apply(&self, piece: RecordBatch, offset: usize) -> Result<RecordBatch, ClientError> {
        let broken = |e: arrow_schema::ArrowError| {
            ClientError::Protocol(format!("output batch without the seed column sent: {e}"))
        };
        match self {
            Fixup::None => Ok(piece),
            Fixup::DropSeed => {
                let i = piece.schema().index_of(columns::SEED).map_err(broken)?;
                let keep: Vec<usize> = (0..piece.num_columns()).filter(|&j| j != i).collect();
                piece.project(&keep).map_err(broken)
            }
            Fixup::RestoreSeed(original) => {
                let schema = piece.schema();
                let i = schema.index_of(columns::SEED).map_err(broken)?;
                let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
                fields[i] = Arc::new(
                    fields[i]
                        .as_ref()
                        .clone()
                        .with_data_type(original.data_type().clone())
                        .with_nullable(true),
                );
                let mut columns = piece.columns().to_vec();
                columns[i] = original.slice(offset, piece.num_rows());
                let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
                RecordBatch::try_new(Arc::new(schema), columns).map_err(broken)
            }
        }
    }
}

impl Client {
    /// Sends `input` over `streams` concurrent `DoExchange` calls (`0` is
    /// taken as 1) and yields the output in input order.
    ///
    /// `schema` is every input batch's schema (as for
    /// [`Client::exchange_with_schema`]); batches with no rows are skipped.
    /// At most `streams + prefetch` input batches are sent ahead of the
    /// batch being read (`prefetch` 0 is taken as 1), which bounds the
    /// client's memory and the server blocks held for this reader.
    ///
    /// The bytes do not depend on `streams`: random draws are keyed by
    /// input position (module docs). With `streams > 1` a `seed` column of
    /// another type than int32/int64/uint32/uint64 is refused
    /// ([`ClientError::InvalidArgument`]).
    pub async fn exchange_ordered<S>(
        &self,
        spec: impl IntoSpecJson,
        schema: SchemaRef,
        input: S,
        streams: usize,
        prefetch: usize,
    ) -> Result<OrderedStream, ClientError>
    where
        S: Stream<Item = RecordBatch> + Send + 'static,
    {
        let spec = spec.into_spec_json();
        let streams = streams.max(1);
        let seed = if streams > 1 {
            SeedColumn::of(&schema)?
        } else {
            SeedColumn::Missing
        };
        let sent = Arc::new(sent_schema(&schema, seed, streams));
        let mut calls = Vec::with_capacity(streams);
        let mut senders = Vec::with_capacity(streams);
        for _ in 0..streams {
            // One batch waits in each call's channel; the rest is bounded by
            // the order channel below.
            let (tx, rx) = mpsc::channel::<RecordBatch>(0);
            calls.push(
                self.exchange_with_schema(spec.as_str(), Arc::clone(&sent), rx)
                    .await?,
            );
            senders.push(tx);
        }
        let (order_tx, order) = mpsc::channel(prefetch.max(1));
        let keying = Keying {
            seed,
            streams,
            sent,
        };
        let dealer = tokio::spawn(deal(input.boxed(), senders, order_tx, keying));
        Ok(OrderedStream {
            calls,
            order,
            current: None,
            dealer,
            done: false,
        })
    }

    /// The number of calls to run when the caller does not choose:
    /// [`default_streams`] of the engine threads the server reports in
    /// `DoAction("stats")`, or of this machine's cores when it reports none.
    pub async fn default_streams(&self) -> usize {
        let reported = self.action_json("stats", bytes::Bytes::new()).await.ok();
        let threads = reported
            .as_ref()
            .and_then(|stats| stats["threads"].as_u64())
            .and_then(|t| usize::try_from(t).ok())
            .filter(|&t| t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        default_streams(threads)
    }

    /// [`Client::preprocess`] over `streams` concurrent calls: the output
    /// batches of `images`, rows in the order of `images`.
    pub async fn preprocess_ordered<I>(
        &self,
        images: I,
        spec: impl IntoSpecJson,
        batch_size: usize,
        streams: usize,
    ) -> Result<Vec<RecordBatch>, ClientError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        use futures::TryStreamExt as _;
        let batches = crate::image_batches(images, batch_size)?;
        self.exchange_ordered(
            spec,
            crate::image_schema(),
            futures::stream::iter(batches),
            streams,
            streams,
        )
        .await?
        .try_collect()
        .await
    }
}

/// How the dealer keys batches (see [`keyed`]).
struct Keying {
    seed: SeedColumn,
    streams: usize,
    sent: SchemaRef,
}

/// Deals `input` round-robin to the calls, recording each batch's call,
/// row count and fix-up first (so the reader knows what to expect before
/// the call answers). Ends when the input ends or a call stops taking
/// input; a batch it cannot send ends the order with an error item.
async fn deal(
    mut input: BoxStream<'static, RecordBatch>,
    mut calls: Vec<mpsc::Sender<RecordBatch>>,
    mut order: mpsc::Sender<Result<Sent, ClientError>>,
    keying: Keying,
) {
    let (mut next, mut first_row) = (0, 0u64);
    while let Some(batch) = input.next().await {
        let rows = batch.num_rows();
        if rows == 0 {
            continue;
        }
        let (batch, fixup) =
            match keyed(batch, first_row, keying.seed, keying.streams, &keying.sent) {
                Ok(keyed) => keyed,
                Err(e) => {
                    let _ = order.send(Err(e)).await;
                    return;
                }
            };
        let sent = Sent {
            call: next,
            rows,
            read: 0,
            fixup,
        };
        if order.send(Ok(sent)).await.is_err() || calls[next].send(batch).await.is_err() {
            return;
        }
        first_row += rows as u64;
        next = (next + 1) % calls.len();
    }
    // Dropping the senders ends every call's input.
}

impl OrderedStream {
    fn fail(&mut self, error: ClientError) -> Poll<Option<Result<RecordBatch, ClientError>>> {
        self.done = true;
        // Cancel the other calls at once rather than when the caller drops us.
        self.calls.clear();
        self.dealer.abort();
        Poll::Ready(Some(Err(error)))
    }
}

impl Stream for OrderedStream {
    type Item = Result<RecordBatch, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let sent = match self.current.take() {
            Some(sent) => sent,
            None => match self.order.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(next))) => next,
                Poll::Ready(Some(Err(e))) => return self.fail(e),
                Poll::Ready(None) => return self.finish(cx),
                Poll::Pending => return Poll::Pending,
            },
        };
        let (call, left) = (sent.call, sent.rows - sent.read);
        let piece = match self.calls[call].poll_next_unpin(cx) {
            Poll::Pending => {
                self.current = Some(sent);
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(piece))) => piece,
            Poll::Ready(Some(Err(e))) => return self.fail(e),
            Poll::Ready(None) => {
                return self.fail(ClientError::Protocol(format!(
                    "call {call} ended with {left} rows of an input batch unanswered"
                )))
            }
        };
        if piece.num_rows() > left {
            let got = piece.num_rows();
            return self.fail(ClientError::Protocol(format!(
                "call {call} answered {got} rows where its input batch had {left} left"
            )));
        }
        let offset = sent.read;
        let fixed = match sent.fixup.apply(piece, offset) {
            Ok(fixed) => fixed,
            Err(e) => return self.fail(e),
        };
        let read = offset + fixed.num_rows();
        if read < sent.rows {
            self.current = Some(Sent { read, ..sent });
        }
        Poll::Ready(Some(Ok(fixed)))
    }
}

impl OrderedStream {
    /// The order ended: the input ended and every batch was read, unless
    /// the dealer died (a panic in the caller's input stream), which must
    /// not look like a clean end with rows missing.
    fn finish(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<RecordBatch, ClientError>>> {
        // The dealer dropped its sender, so it has returned or is unwinding.
        match Pin::new(&mut self.dealer).poll(cx) {
            Poll::Ready(Err(e)) if e.is_panic() => self.fail(ClientError::InvalidArgument(
                format!("the input stream panicked: {e}"),
            )),
            Poll::Ready(_) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_streams_follow_the_python_rule() {
        assert_eq!([0, 1, 2, 3, 16].map(default_streams), [1, 1, 2, 3, 4]);
    }
}
