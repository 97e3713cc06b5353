//! Several `DoExchange` calls at once, outputs in input order: the Rust
//! form of the Python client's `preprocess(..., streams=K)`.
//!
//! One call keeps the server's cores busy only while its pipeline is full;
//! between a call's batches (upload, the tail of one batch, the first rows
//! of the next) cores idle. K calls keep K batches in the server at once.
//! Input batch `i` goes to call `i % K`; each call answers its batches in
//! its own order, so the output is read back call by call, as many rows
//! from call `i % K` as batch `i` had.

use std::pin::Pin;
use std::task::{Context, Poll};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::channel::mpsc;
use futures::stream::{BoxStream, Stream, StreamExt};
use futures::SinkExt as _;

use crate::client::ExchangeStream;
use crate::{Client, ClientError, IntoSpecJson};

/// Default number of calls for [`Client::exchange_ordered`] when the server
/// reports `threads` engine threads: `min(4, threads)`, the Python client's
/// rule (`Client.default_streams`). Four calls already overlap every gap
/// of one call; more only hold more memory in the server.
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
    /// `(call, rows)` of each input batch sent, in input order.
    order: mpsc::Receiver<(usize, usize)>,
    /// The batch being read: its call and the rows still to come.
    current: Option<(usize, usize)>,
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
    /// Rows keyed by position (the seeded random transforms without a
    /// `seed` column) are keyed per call, so their bytes depend on
    /// `streams`; give them a seed column to get the same bytes for any
    /// `streams`.
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
        let mut calls = Vec::with_capacity(streams);
        let mut senders = Vec::with_capacity(streams);
        for _ in 0..streams {
            // One batch waits in each call's channel; the rest is bounded by
            // the order channel below.
            let (tx, rx) = mpsc::channel::<RecordBatch>(0);
            calls.push(
                self.exchange_with_schema(spec.as_str(), schema.clone(), rx)
                    .await?,
            );
            senders.push(tx);
        }
        let (order_tx, order) = mpsc::channel(prefetch.max(1));
        let dealer = tokio::spawn(deal(input.boxed(), senders, order_tx));
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

/// Deals `input` round-robin to the calls, recording each batch's call and
/// row count first (so the reader knows what to expect before the call
/// answers). Ends when the input ends or a call stops taking input.
async fn deal(
    mut input: BoxStream<'static, RecordBatch>,
    mut calls: Vec<mpsc::Sender<RecordBatch>>,
    mut order: mpsc::Sender<(usize, usize)>,
) {
    let mut next = 0;
    while let Some(batch) = input.next().await {
        let rows = batch.num_rows();
        if rows == 0 {
            continue;
        }
        if order.send((next, rows)).await.is_err() || calls[next].send(batch).await.is_err() {
            return;
        }
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
        let (call, remaining) = match self.current {
            Some(current) => current,
            None => match self.order.poll_next_unpin(cx) {
                Poll::Ready(Some(next)) => next,
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            },
        };
        self.current = Some((call, remaining));
        match self.calls[call].poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(batch))) if batch.num_rows() > remaining => {
                let got = batch.num_rows();
                self.fail(ClientError::Protocol(format!(
                    "call {call} answered {got} rows where its input batch had {remaining} left"
                )))
            }
            Poll::Ready(Some(Ok(batch))) => {
                let left = remaining - batch.num_rows();
                self.current = (left > 0).then_some((call, left));
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => self.fail(e),
            Poll::Ready(None) => self.fail(ClientError::Protocol(format!(
                "call {call} ended with {remaining} rows of an input batch unanswered"
            ))),
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
