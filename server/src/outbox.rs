//! `DoExchange` and `DoGet` output messages, framed outside tonic's encoder
//! so that no call keeps a buffer the size of its largest message.
//!
//! Why not tonic's encoder: it copies each message into one `BytesMut` per
//! call and hands the transport slices of it; that buffer grows to the
//! largest message (`--target-message-bytes`, 4 MiB) and is reused, never
//! freed, until the call ends. With 128 clients streaming the large set,
//! those buffers were 180 MiB of the server's 460 MiB peak heap (heaptrack),
//! held by calls waiting for their next input.
//!
//! So the response stream ([`Posted`]) frames each message itself: the gRPC
//! prefix and the protobuf fields before the body in one small buffer, then
//! the body (the Arrow IPC body, an allocation of its own) as it is, one
//! copy fewer than tonic's. It queues the two in the call's [`Outbox`] and
//! gives tonic an empty `FlightData` in the message's place, which tonic
//! encodes as five zero bytes; the call guard's response body swaps those
//! bytes for the queued message ([`Outbox::swap`]) on its way to the
//! transport. After each message the stream returns `Pending` once (waking
//! itself), so tonic hands each placeholder on alone and the transport,
//! which polls for more only as the client's window allows, paces the
//! encoding as before.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arrow_flight::FlightData;
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{BoxStream, Stream, StreamExt};
use prost::{encode_length_delimiter, length_delimiter_len, Message as _};
use tonic::Status;

/// gRPC's message prefix: a compression flag, then the length as a
/// big-endian u32. An empty message is the prefix alone, all zeros.
const PREFIX_BYTES: usize = 5;

/// `FlightData.data_body`'s protobuf key: field 1000 (Arrow's
/// `Flight.proto`), wire type 2 (length-delimited). A key is a varint, as a
/// length delimiter is.
const DATA_BODY_KEY: usize = (1000 << 3) | 2;

/// One call's framed output messages, oldest first, each as its head (gRPC
/// prefix and the fields before the body) and its body.
#[derive(Debug)]
pub(crate) struct Outbox {
    messages: Mutex<VecDeque<[Bytes; 2]>>,
    /// `--max-message-bytes`: a larger message fails the call, as tonic's
    /// encoder would fail it.
    max_message: usize,
}

impl Outbox {
    /// An empty outbox for messages of at most `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> Arc<Self> {
        Arc::new(Self {
            messages: Mutex::default(),
            max_message,
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<[Bytes; 2]>> {
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames `message`, queues it, and returns the placeholder for tonic.
    ///
    /// Errors: `OUT_OF_RANGE` for a message over `max_message` bytes (or
    /// over gRPC's 4 GiB), with tonic's wording, as tonic's encoder ended
    /// the call.
    fn post(&self, mut message: FlightData) -> Result<FlightData, Status> {
        let body = std::mem::take(&mut message.data_body);
        let head_fields = message.encoded_len();
        let body_field = if body.is_empty() {
            0
        } else {
            length_delimiter_len(DATA_BODY_KEY) + length_delimiter_len(body.len()) + body.len()
        };
        let len = head_fields + body_field;
        let limit = self.max_message.min(u32::MAX as usize);
        if len > limit {
            return Err(Status::out_of_range(format!(
                "Error, encoded message length too large: found {len} bytes, the limit is: {limit} bytes"
            )));
        }
        let mut head = BytesMut::with_capacity(PREFIX_BYTES + head_fields + 16);
        head.put_u8(0);
        head.put_u32(len as u32);
        let encoded = message.encode(&mut head).and_then(|()| {
            if body.is_empty() {
                return Ok(());
            }
            // prost writes fields in field-number order, so the body, field
            // 1000, comes last there too.
            encode_length_delimiter(DATA_BODY_KEY, &mut head)?;
            encode_length_delimiter(body.len(), &mut head)
        });
        encoded.map_err(|e| Status::internal(format!("Error encoding: {e}")))?;
        self.queue().push_back([head.freeze(), body]);
        Ok(FlightData::default())
    }

    /// The framed messages that `chunk`, what tonic encoded for this call,
    /// stands for: one queued message per placeholder in it, in order.
    ///
    /// Errors: `INTERNAL` when `chunk` is not a run of placeholders or more
    /// placeholders came than messages were queued (a bug, never input).
    pub(crate) fn swap(&self, chunk: &[u8]) -> Result<Vec<Bytes>, Status> {
        let count = chunk.len() / PREFIX_BYTES;
        let mut queue = self.queue();
        if !chunk.len().is_multiple_of(PREFIX_BYTES)
            || chunk.iter().any(|&b| b != 0)
            || count > queue.len()
        {
            return Err(Status::internal(
                "an output message reached the transport without its framing",
            ));
        }
        Ok(queue
            .drain(..count)
            .flatten()
            .filter(|chunk| !chunk.is_empty())
            .collect())
    }
}

/// The call's response: with `outbox` (the call guard frames this call's
/// output), `stream`'s messages framed into it, tonic getting placeholders;
/// without it, `stream` as it is.
pub(crate) fn framed_output(
    stream: BoxStream<'static, Result<FlightData, Status>>,
    outbox: Option<Arc<Outbox>>,
) -> BoxStream<'static, Result<FlightData, Status>> {
    match outbox {
        Some(outbox) => Posted::new(stream, outbox).boxed(),
        None => stream,
    }
}

/// A response stream whose messages go through `outbox` (see the module
/// docs): yields a placeholder per message, then `Pending` once.
struct Posted<S> {
    inner: S,
    outbox: Arc<Outbox>,
    yield_next: bool,
}

impl<S> Posted<S> {
    /// `inner`'s messages, framed into `outbox`.
    fn new(inner: S, outbox: Arc<Outbox>) -> Self {
        Self {
            inner,
            outbox,
            yield_next: false,
        }
    }
}

impl<S> Stream for Posted<S>
where
    S: Stream<Item = Result<FlightData, Status>> + Unpin,
{
    type Item = Result<FlightData, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if std::mem::take(&mut self.yield_next) {
            // tonic's encoder hands on what it has encoded when its source
            // is not ready: one placeholder at a time.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let next = std::task::ready!(self.inner.poll_next_unpin(cx));
        Poll::Ready(next.map(|message| {
            let placeholder = self.outbox.post(message?)?;
            self.yield_next = true;
            Ok(placeholder)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_flight::FlightDescriptor;

    fn framed(outbox: &Outbox, message: FlightData) -> Vec<u8> {
        let placeholder = outbox.post(message).expect("posted");
        assert_eq!(
            placeholder.encoded_len(),
            0,
            "tonic encodes it as a bare prefix"
        );
        outbox.swap(&[0; PREFIX_BYTES]).expect("swapped").concat()
    }

    #[test]
    fn a_message_is_framed_as_tonic_and_prost_frame_it() {
        let outbox = Outbox::new(1 << 20);
        let messages = [
            FlightData {
                flight_descriptor: Some(FlightDescriptor::new_cmd(b"spec".to_vec())),
                data_header: vec![1, 2, 3].into(),
                app_metadata: vec![4].into(),
                data_body: vec![9; 300].into(),
            },
            FlightData {
                data_header: vec![7; 20].into(),
                ..Default::default()
            },
            FlightData::default(),
        ];
        for message in messages {
            let mut want = vec![0];
            want.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
            want.extend(message.encode_to_vec());
            assert_eq!(framed(&outbox, message), want);
        }
    }

    #[test]
    fn each_placeholder_takes_one_message_in_order_and_nothing_else_passes() {
        let outbox = Outbox::new(1 << 20);
        for i in 0..3u8 {
            let message = FlightData {
                data_header: vec![i].into(),
                data_body: vec![i; 4].into(),
                ..Default::default()
            };
            outbox.post(message).unwrap();
        }
        let two = outbox.swap(&[0; 2 * PREFIX_BYTES]).unwrap();
        assert_eq!(two.len(), 4);
        assert_eq!((&two[1][..], &two[3][..]), (&[0u8; 4][..], &[1u8; 4][..]));
        for bad in [
            &[0u8; 4][..],
            &[0, 0, 0, 0, 1][..],
            &[0; 2 * PREFIX_BYTES][..],
        ] {
            let error = outbox.swap(bad).expect_err("refused");
            assert_eq!(error.code(), tonic::Code::Internal);
        }
        assert_eq!(outbox.swap(&[0; PREFIX_BYTES]).unwrap()[1], vec![2u8; 4]);
    }

    #[test]
    fn a_message_over_the_limit_fails_as_tonic_fails_it() {
        let outbox = Outbox::new(100);
        let message = FlightData {
            data_body: vec![0; 100].into(),
            ..Default::default()
        };
        let error = outbox.post(message).expect_err("too large");
        assert_eq!(error.code(), tonic::Code::OutOfRange);
        assert!(outbox.queue().is_empty());
    }

    #[tokio::test]
    async fn the_stream_yields_one_placeholder_per_poll_that_is_ready() {
        let outbox = Outbox::new(1 << 20);
        let messages = futures::stream::iter((0..2).map(|_| Ok(FlightData::default())));
        let mut posted = Posted::new(messages, Arc::clone(&outbox));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut polls = Vec::new();
        for _ in 0..5 {
            polls.push(match Pin::new(&mut posted).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(_))) => "message",
                Poll::Ready(Some(Err(_))) => "error",
                Poll::Ready(None) => "end",
                Poll::Pending => "pending",
            });
        }
        assert_eq!(polls, ["message", "pending", "message", "pending", "end"]);
        assert_eq!(outbox.queue().len(), 2);
    }
}
