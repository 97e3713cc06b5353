//! `DoExchange` and `DoPut` input messages, each assembled in an allocation
//! of its own that goes when the message does.
//!
//! Why not tonic's decoder: it reads a request stream into one `BytesMut`
//! per call and hands each message out as a zero-copy slice of it. That
//! buffer never shrinks and stays referenced until the call ends, so every
//! call keeps an allocation the size of its largest message (about 15 MB
//! for 32 four-megapixel JPEGs) while it waits for its client, long after
//! the batch has gone through the engine and out of the input budget
//! ([`crate::budget`]). With 128 clients streaming the large set and the
//! budget at 64 MiB, that was 2.3 GiB of peak RSS against 57 MiB of input
//! charged (`bench/rss.py --clients 128`).
//!
//! So [`AssemblingBody`] sits between the metered request body and tonic:
//! it copies each message's bytes into a `Vec` sized from its length prefix
//! (the one copy tonic made), queues it in the call's [`Assembled`], and
//! gives tonic an empty message (a zero-length prefix) in its place.
//! [`input_messages`] swaps each empty message tonic yields for the next
//! queued one, decoded; its payload slices the message's own allocation
//! (arrow-flight copies it once more when it is not 64-byte aligned, as it
//! did tonic's), which is freed once nothing built on it is left. A message tonic
//! must refuse (compressed, which this server does not accept, or longer
//! than `--max-message-bytes`) goes to tonic unchanged, with the rest of
//! the body, so its error is tonic's own.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arrow_flight::FlightData;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, Stream, StreamExt};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::Message as _;
use tonic::body::Body;
use tonic::Status;

/// gRPC's message prefix: a compression flag, then the length as a
/// big-endian u32.
const PREFIX_BYTES: usize = 5;

/// What tonic gets for each assembled message: an uncompressed message of
/// no bytes (a `FlightData` with every field unset).
const PLACEHOLDER: [u8; PREFIX_BYTES] = [0; PREFIX_BYTES];

/// One call's assembled messages, oldest first, until [`input_messages`]
/// takes them.
#[derive(Debug, Default)]
pub(crate) struct Assembled {
    messages: Mutex<VecDeque<Bytes>>,
}

impl Assembled {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Bytes>> {
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request body whose messages are assembled into `assembled`, tonic
/// getting an empty message for each (see the module docs).
pub(crate) struct AssemblingBody {
    inner: Body,
    assembled: Arc<Assembled>,
    /// `--max-message-bytes`: a longer message goes to tonic to refuse.
    max_message: usize,
    prefix: [u8; PREFIX_BYTES],
    prefix_len: usize,
    /// The message being received and the bytes it still lacks.
    message: Option<(Vec<u8>, usize)>,
    /// Set once a message went to tonic unchanged: tonic fails the call on
    /// its prefix, and everything after goes to tonic as it came.
    unchanged: bool,
}

impl AssemblingBody {
    /// Assembles `inner`'s messages into `assembled`.
    pub(crate) fn new(inner: Body, assembled: Arc<Assembled>, max_message: usize) -> Self {
        Self {
            inner,
            assembled,
            max_message,
            prefix: PLACEHOLDER,
            prefix_len: 0,
            message: None,
            unchanged: false,
        }
    }

    /// Takes one data frame: completes messages into the queue and returns
    /// what tonic gets for them (placeholders, or from a message tonic must
    /// refuse on, the bytes as they came).
    fn assemble(&mut self, data: &Bytes) -> BytesMut {
        let mut out = BytesMut::new();
        let mut at = 0;
        while at < data.len() {
            if let Some((message, left)) = &mut self.message {
                let n = (*left).min(data.len() - at);
                message.extend_from_slice(&data[at..at + n]);
                *left -= n;
                at += n;
                if *left == 0 {
                    let (message, _) = self.message.take().expect("checked above");
                    self.queue_message(Bytes::from(message), &mut out);
                }
                continue;
            }
            let n = (PREFIX_BYTES - self.prefix_len).min(data.len() - at);
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[at..at + n]);
            self.prefix_len += n;
            at += n;
            if self.prefix_len < PREFIX_BYTES {
                break;
            }
            self.prefix_len = 0;
            let [flag, len @ ..] = self.prefix;
            let len = u32::from_be_bytes(len) as usize;
            if flag != 0 || len > self.max_message {
                out.extend_from_slice(&self.prefix);
                out.extend_from_slice(&data[at..]);
                self.unchanged = true;
                break;
            }
            if len == 0 {
                self.queue_message(Bytes::new(), &mut out);
            } else {
                // The input budget has charged the whole message already
                // (its prefix came through the metered body).
                self.message = Some((Vec::with_capacity(len), len));
            }
        }
        out
    }

    fn queue_message(&self, message: Bytes, out: &mut BytesMut) {
        self.assembled.queue().push_back(message);
        out.extend_from_slice(&PLACEHOLDER);
    }

    /// The error for a request that ended inside a message, if it did.
    fn ended_early(&self) -> Option<Status> {
        let (received, declared) = match &self.message {
            Some((message, left)) => (message.len(), message.len() + left),
            None if self.prefix_len > 0 => (self.prefix_len, PREFIX_BYTES),
            None => return None,
        };
        Some(Status::invalid_argument(format!(
            "could not decode the input stream: the request ended inside a message \
             ({received} of {declared} bytes)"
        )))
    }
}

impl HttpBody for AssemblingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        loop {
            let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
            if self.unchanged {
                return Poll::Ready(frame);
            }
            let frame = match frame {
                Some(Ok(frame)) => frame,
                None => return Poll::Ready(self.ended_early().map(Err)),
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
            };
            let Some(data) = frame.data_ref() else {
                // Trailers end the request: a message cut short by them is
                // an error too, where tonic would end the stream quietly.
                return Poll::Ready(Some(match self.ended_early() {
                    Some(status) => Err(status),
                    None => Ok(frame),
                }));
            };
            let out = self.assemble(data);
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A message cut short still owes tonic its error.
        self.inner.is_end_stream() && (self.unchanged || self.ended_early().is_none())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The call's input messages: with `assembled` (the call guard assembles
/// this call's messages), each message `input` (tonic's decoder) yields is
/// a placeholder, swapped for the next assembled message, decoded; without
/// it, `input` as it is.
///
/// Errors: `InvalidArgument` for an assembled message that is not a
/// `FlightData`; tonic's own errors pass through.
pub(crate) fn input_messages<S>(
    input: S,
    assembled: Option<Arc<Assembled>>,
) -> BoxStream<'static, Result<FlightData, Status>>
where
    S: Stream<Item = Result<FlightData, Status>> + Send + 'static,
{
    let Some(assembled) = assembled else {
        return input.boxed();
    };
    input
        .map(move |placeholder| {
            placeholder?;
            // ABORTED, which the data path passes on as it is: a server bug,
            // not the client's input.
            let message = assembled.queue().pop_front().ok_or_else(|| {
                Status::aborted(
                    "server error: an input message was decoded before it was assembled",
                )
            })?;
            FlightData::decode(message).map_err(|e| {
                Status::invalid_argument(format!("could not decode the input stream: {e}"))
            })
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::tests::Frames;

    fn message(len: usize, fill: u8) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.resize(PREFIX_BYTES + len, fill);
        m
    }

    fn body(wire: &[u8], cut: usize) -> AssemblingBody {
        let frames = Frames::data(wire.chunks(cut).map(Bytes::copy_from_slice));
        AssemblingBody::new(Body::new(frames), Arc::default(), 1 << 20)
    }

    async fn drain(body: &mut AssemblingBody) -> (Vec<u8>, Option<Status>) {
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
        {
            match frame {
                Ok(frame) => out.extend_from_slice(frame.data_ref().expect("data")),
                Err(status) => return (out, Some(status)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn each_message_is_assembled_whole_wherever_the_frames_cut() {
        let mut wire = message(1000, 7);
        wire.extend(message(0, 0));
        wire.extend(message(3, 9));
        for cut in [1, 2, 4, 5, 6, 999, 1004, 1005, 1006, 4096] {
            let mut body = body(&wire, cut);
            let (out, error) = drain(&mut body).await;
            assert!(error.is_none(), "cut {cut}: {error:?}");
            assert_eq!(out, [PLACEHOLDER; 3].concat(), "cut {cut}");
            let queued: Vec<Bytes> = body.assembled.queue().drain(..).collect();
            assert_eq!(queued, [vec![7; 1000], vec![], vec![9; 3]], "cut {cut}");
            // Nothing but the message holds its memory (the empty one has
            // none: a static `Bytes`, never unique).
            assert!(queued[0].is_unique() && queued[2].is_unique(), "cut {cut}");
        }
    }

    #[tokio::test]
    async fn a_message_tonic_must_refuse_goes_to_it_unchanged_with_the_rest() {
        let mut wire = message(3, 1);
        let mut compressed = message(4, 2);
        compressed[0] = 1;
        wire.extend(&compressed);
        wire.extend(message(2, 3));
        let mut body = body(&wire, 6);
        let (out, error) = drain(&mut body).await;
        assert!(error.is_none());
        assert_eq!(out, [&PLACEHOLDER[..], &wire[8..]].concat());
        assert_eq!(body.assembled.queue().len(), 1);

        let over = message((1 << 20) + 1, 0);
        let (out, _) = drain(&mut self::body(&over, 4096)).await;
        assert_eq!(out, over);
    }

    #[tokio::test]
    async fn a_request_that_ends_inside_a_message_is_an_error() {
        let wire = message(100, 1);
        for (end, what) in [(3, "3 of 5 bytes"), (50, "45 of 100 bytes")] {
            let (_, error) = drain(&mut body(&wire[..end], 7)).await;
            let error = error.expect("an error");
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
            assert!(error.message().contains(what), "{}", error.message());
        }
    }

    async fn next_frame(body: &mut AssemblingBody) -> Option<Result<Frame<Bytes>, Status>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test]
    async fn trailers_inside_a_message_are_an_error_and_after_one_pass_on() {
        let wire = message(10, 1);
        for (end, cut_short) in [(8, true), (15, false)] {
            let frames = [
                Frame::data(Bytes::copy_from_slice(&wire[..end])),
                Frame::trailers(http::HeaderMap::new()),
            ];
            let inner = Body::new(Frames(frames.into()));
            let mut body = AssemblingBody::new(inner, Arc::default(), 1 << 20);
            let first = next_frame(&mut body).await.expect("a frame");
            let last = if cut_short {
                first
            } else {
                next_frame(&mut body).await.expect("trailers")
            };
            match last {
                Err(status) => {
                    assert!(cut_short);
                    assert_eq!(status.code(), tonic::Code::InvalidArgument);
                }
                Ok(frame) => assert!(!cut_short && frame.is_trailers()),
            }
        }
    }

    #[tokio::test]
    async fn placeholders_are_swapped_for_the_assembled_messages_in_order() {
        let assembled = Arc::new(Assembled::default());
        let sent: Vec<FlightData> = (0..3u8)
            .map(|i| FlightData {
                data_header: vec![i].into(),
                data_body: vec![i; 10].into(),
                ..Default::default()
            })
            .collect();
        assembled
            .queue()
            .extend(sent.iter().map(|m| Bytes::from(m.encode_to_vec())));
        assembled.queue().push_back(Bytes::from_static(&[0xff]));
        let placeholders = futures::stream::iter((0..4).map(|_| Ok(FlightData::default())));
        let got: Vec<_> = input_messages(placeholders, Some(assembled))
            .collect()
            .await;
        for (got, sent) in got.iter().zip(&sent) {
            assert_eq!(got.as_ref().expect("decoded"), sent);
        }
        let error = got[3].as_ref().expect_err("not a FlightData");
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }
}
