//! The server-wide budget on encoded input bytes in flight
//! ([`CallLimits::max_input_bytes_in_flight`](crate::CallLimits)).
//!
//! A message is charged whole, from the moment its gRPC length prefix is
//! read ([`MeteredBody`], which the call guard wraps around each request)
//! until the server is done with it: the input batch has been through the
//! engine ([`crate::stream::next_input`] hands the message's [`Charge`] to
//! whoever processes it), or the unary request has been read. A call whose
//! next message does not fit waits before reading its body, holding back
//! its HTTP/2 flow-control window so the client waits too, and fails with
//! `RESOURCE_EXHAUSTED` when room does not come within the idle timeout.
//! So however many clients connect, partial messages, decoded input
//! batches and messages queued for the engine together stay under one cap.
//! (`DoExchange` and `DoPut` messages are assembled outside tonic's
//! per-call read buffer, [`crate::assemble`], so no call keeps a message's
//! memory after its batch is dropped.)
//!
//! Two rules keep the waiting deadlock-free:
//!
//! - **Whole messages, never parts.** Charging frame by frame let many
//!   calls each hold part of a message while waiting for room for the
//!   rest: with 128 clients sending 14 MB messages every call waited on
//!   every other one until the idle timeout (`bench/rss.py --clients 128`).
//!   A message's charge is taken at once, so whoever holds one can finish
//!   receiving it.
//! - **A call that owes its client output is not made to wait.** A client
//!   such as pyarrow's blocks in its write and reads nothing until the
//!   write is taken; if that call also holds output in pool blocks, waiting
//!   here would pin those blocks while calls holding the budget wait for
//!   them. Such a message is admitted over the cap (the overdraft makes
//!   later calls wait longer); each call reads at most a pipeline's depth
//!   ahead, so the overdraft is bounded by the calls with unsent output.
//!   The price: calls that write a batch ahead of their reads always owe
//!   output when their next message comes, so they keep their place, and a
//!   call that starts while the budget is full waits for room that they
//!   keep taking, until some of them end: late calls starve once such
//!   calls' messages fill the budget (64 MiB, 15 MB messages, pyarrow
//!   clients two batches ahead: with 8 clients two got their first rows
//!   after 25 s, once the others had stopped; with 32 the median first
//!   row came at 34 s, against 4–6 s with 256 MiB, which still left 13–14
//!   of 32 clients without rows until the others stopped). A client that
//!   sends its next batch only once it has read the last one's rows (the
//!   Python client: one batch in flight per call, several calls) owes
//!   nothing when it sends, waits in line holding nothing, and is served
//!   in arrival order. Tried and not
//!   kept: making owing calls wait in line until it stalled (0.5 s) let
//!   unread output pile up as 16 MiB encoded copies while their clients
//!   stood blocked in their writes (128 clients: 2.2 GiB of them, 5.0 GiB
//!   peak RSS, `bench/rss.py`); making them wait while the output pool had
//!   room, going over the cap only while a request waited for a pool block
//!   (one call per 20 ms), was fair with 8 clients (every first row within
//!   3 s, 455 MiB) but with 32 the overdrafts outran the engine (329 MiB
//!   of input against a 64 MiB cap, 1 222 MiB peak RSS), and admitting
//!   the next one only once a block had come back (or after 1 s) still
//!   gave 200 MiB and 1 094 MiB at 6 % fewer images/s: each call let in
//!   frees the block it owed but brings a batch that needs one, so the
//!   pool stays short. Under pyarrow's write-then-read clients, every call
//!   that makes progress holds about a batch; bounding memory means
//!   bounding the calls that progress at once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::Status;

use crate::watch::{Busy, CallWatch};

/// Bytes in flight across all calls, against a cap. Calls that wait are
/// served first come, first served: a large message is never passed over
/// by a stream of smaller ones, and no call waits behind more than the
/// calls that were already waiting when it came. A request larger than the
/// whole cap goes alone: it is granted when nothing else is charged.
#[derive(Debug)]
pub(crate) struct InputBudget {
    cap: usize,
    state: Mutex<BudgetState>,
    /// Mirrors `used` for `/metrics` and the `stats` action.
    gauge: Gauge,
}

#[derive(Debug, Default)]
struct BudgetState {
    /// Bytes charged now (over `cap` while an overdraft is out, or while
    /// one message larger than the cap is in alone).
    used: usize,
    /// Calls waiting for room, oldest first.
    waiters: VecDeque<Waiter>,
    /// Charges given back so far: whether the line moved.
    releases: u64,
}

/// A call waiting for `bytes`; granted by sending it its charge.
#[derive(Debug)]
struct Waiter {
    bytes: usize,
    grant: oneshot::Sender<Charge>,
}

impl InputBudget {
    /// A budget of `cap` bytes whose use is mirrored in `gauge`.
    pub(crate) fn new(cap: usize, gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            cap,
            state: Mutex::new(BudgetState::default()),
            gauge,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A charge of `bytes` already counted in `state.used`.
    fn charge(self: &Arc<Self>, state: &mut BudgetState, bytes: usize) -> Charge {
        state.used += bytes;
        self.gauge.set(state.used as i64);
        Charge {
            budget: Some(Arc::clone(self)),
            bytes,
        }
    }

    /// Whether `bytes` more fit with `used` charged: under the cap, or
    /// alone.
    fn fits(&self, used: usize, bytes: usize) -> bool {
        used == 0 || used.saturating_add(bytes) <= self.cap
    }

    /// Takes `bytes` if they fit now and nobody is waiting before us.
    fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        let mut state = self.state();
        (state.waiters.is_empty() && self.fits(state.used, bytes))
            .then(|| self.charge(&mut state, bytes))
    }

    /// Takes `bytes` now, over the cap if need be (later takes wait until
    /// use is back under it).
    fn take_now(self: &Arc<Self>, bytes: usize) -> Charge {
        self.charge(&mut self.state(), bytes)
    }

    /// Takes `bytes`, waiting in line for room; gives up when nothing at
    /// all is given back for `patience` (a line that moves, however slowly,
    /// is the server's pace, which the client's own deadline bounds).
    async fn take(self: Arc<Self>, bytes: usize, patience: Duration) -> Result<Charge, Status> {
        // However this ends (a grant, giving up, or the call dropped while
        // waiting), the ones behind us may fit now.
        let _line = Line(&self);
        let (mut granted, mut releases) = {
            let mut state = self.state();
            if state.waiters.is_empty() && self.fits(state.used, bytes) {
                return Ok(self.charge(&mut state, bytes));
            }
            let (grant, granted) = oneshot::channel();
            state.waiters.push_back(Waiter { bytes, grant });
            (granted, state.releases)
        };
        loop {
            match tokio::time::timeout(patience, &mut granted).await {
                Ok(Ok(charge)) => return Ok(charge),
                // The sender is only dropped with the budget.
                Ok(Err(_)) => return Err(Status::unavailable("the server is shutting down")),
                Err(_) => {
                    let now = self.state().releases;
                    if now != releases {
                        releases = now;
                        continue;
                    }
                    break;
                }
            }
        }
        // Granted in the meantime by another waiter leaving the line.
        if let Ok(charge) = granted.try_recv() {
            return Ok(charge);
        }
        Err(Status::resource_exhausted(format!(
            "the server's budget of {} bytes of input in flight \
             (--max-input-bytes-in-flight) stayed full, with nothing given back, for {:.0} s; \
             retry later",
            self.cap,
            patience.as_secs_f64()
        )))
    }

    fn release(self: &Arc<Self>, bytes: usize) {
        {
            let mut state = self.state();
            state.used -= bytes;
            state.releases += 1;
            self.gauge.set(state.used as i64);
        }
        self.grant_waiting();
    }

    /// Grants the waiters at the head of the line that fit now.
    fn grant_waiting(self: &Arc<Self>) {
        // Charges a waiter gave up on are dropped after the lock is let go
        // (dropping one releases it, which takes the lock).
        let mut returned = Vec::new();
        {
            let mut state = self.state();
            while let Some(front) = state.waiters.front() {
                if front.grant.is_closed() {
                    state.waiters.pop_front();
                    continue;
                }
                if !self.fits(state.used, front.bytes) {
                    break;
                }
                let waiter = state.waiters.pop_front().expect("checked above");
                let charge = self.charge(&mut state, waiter.bytes);
                if let Err(charge) = waiter.grant.send(charge) {
                    returned.push(charge);
                }
            }
        }
        drop(returned);
    }
}

/// Lets the line move when a [`InputBudget::take`] ends: declared before
/// the grant's receiver, so it runs after the receiver is gone.
struct Line<'a>(&'a Arc<InputBudget>);

impl Drop for Line<'_> {
    fn drop(&mut self) {
        self.0.grant_waiting();
    }
}

/// Bytes taken from an [`InputBudget`], given back when dropped.
#[derive(Debug, Default)]
pub(crate) struct Charge {
    budget: Option<Arc<InputBudget>>,
    bytes: usize,
}

impl Charge {
    /// Adds `other`'s bytes to this charge (both from the same budget).
    fn absorb(&mut self, mut other: Charge) {
        if self.budget.is_none() {
            self.budget = other.budget.take();
        } else {
            other.budget = None;
        }
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            if self.bytes > 0 {
                budget.release(self.bytes);
            }
        }
    }
}

/// One call's messages received (or being received) and not yet handed on.
#[derive(Debug)]
pub(crate) struct InputMeter {
    budget: Arc<InputBudget>,
    queue: Mutex<MeterQueue>,
}

/// The charges of a call's messages in arrival order, and how many of the
/// oldest the gRPC decoder has already yielded.
#[derive(Debug, Default)]
struct MeterQueue {
    charges: VecDeque<Charge>,
    decoded: usize,
}

impl InputMeter {
    pub(crate) fn new(budget: &Arc<InputBudget>) -> Arc<Self> {
        Arc::new(Self {
            budget: Arc::clone(budget),
            queue: Mutex::new(MeterQueue::default()),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, MeterQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the gRPC decoder yielded the call's next message.
    pub(crate) fn message_decoded(&self) {
        self.queue().decoded += 1;
    }

    /// The charge for every message decoded since the last call (one
    /// input payload may span several messages, e.g. a descriptor-only
    /// one before it). Its holder keeps the bytes counted until it is done
    /// with them; messages still arriving keep their own charges.
    pub(crate) fn take(&self) -> Charge {
        let mut queue = self.queue();
        let n = queue.decoded.min(queue.charges.len());
        queue.decoded = 0;
        let mut taken = Charge::default();
        for charge in queue.charges.drain(..n) {
            taken.absorb(charge);
        }
        taken
    }

    fn push(&self, charge: Charge) {
        self.queue().charges.push_back(charge);
    }

    /// Whether none of the call's messages is being received or waiting to
    /// be decoded.
    fn is_idle(&self) -> bool {
        self.queue().charges.is_empty()
    }
}

/// Where a request body is in gRPC's message framing: each message is a
/// 5-byte prefix (a compression flag, then its length as a big-endian u32)
/// and that many bytes.
#[derive(Debug, Default)]
struct Framing {
    prefix: [u8; 5],
    prefix_len: usize,
    body_left: usize,
}

/// A message whose prefix was read in a frame: its size on the wire
/// (prefix included), where in the frame its prefix starts (0 when it began
/// in an earlier frame) and whether it also ends in that frame.
#[derive(Debug, PartialEq, Eq)]
struct Started {
    bytes: usize,
    start: usize,
    ends_in_frame: bool,
}

impl Framing {
    /// Walks one frame's bytes and returns the messages whose prefix
    /// completes in it, in order.
    fn scan(&mut self, frame: &[u8]) -> Vec<Started> {
        let mut started: Vec<Started> = Vec::new();
        let mut data = frame;
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                if self.body_left == 0 {
                    if let Some(last) = started.last_mut() {
                        last.ends_in_frame = true;
                    }
                }
                continue;
            }
            let start = (frame.len() - data.len()).saturating_sub(self.prefix_len);
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                self.body_left = len;
                started.push(Started {
                    bytes: len.saturating_add(5),
                    start,
                    ends_in_frame: len == 0,
                });
            }
        }
        started
    }
}

/// A request body that charges each message to its call's [`InputMeter`]
/// as its prefix arrives, waiting for room (see the module docs).
pub(crate) struct MeteredBody {
    inner: Body,
    meter: Arc<InputMeter>,
    framing: Framing,
    /// Marks the call busy while it waits on the budget, which is not the
    /// client's stall, and tells whether the call owes its client output.
    watch: Option<Arc<CallWatch>>,
    patience: Duration,
    /// `--max-message-bytes`.
    max_message: usize,
    waiting: Option<Waiting>,
}

/// A frame read whose last message is not yet paid for.
struct Waiting {
    frame: Frame<bytes::Bytes>,
    charge: BoxFuture<'static, Result<Charge, Status>>,
    _busy: Option<Busy>,
}

impl MeteredBody {
    /// Meters `inner` into `meter`; a message over `max_message` bytes
    /// (`--max-message-bytes`) passes uncharged, for tonic to refuse.
    pub(crate) fn new(
        inner: Body,
        meter: Arc<InputMeter>,
        watch: Option<Arc<CallWatch>>,
        patience: Duration,
        max_message: usize,
    ) -> Self {
        Self {
            inner,
            meter,
            framing: Framing::default(),
            watch,
            patience,
            max_message,
            waiting: None,
        }
    }
}

impl HttpBody for MeteredBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Some(waiting) = &mut self.waiting {
            let charge = std::task::ready!(waiting.charge.as_mut().poll(cx));
            let Waiting { frame, .. } = self.waiting.take().expect("checked above");
            return Poll::Ready(Some(charge.map(|charge| {
                self.meter.push(charge);
                frame
            })));
        }
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let Some(Ok(frame)) = frame else {
            return Poll::Ready(frame);
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        // Whether the call had no message on its way in before this frame
        // (an overdraft is one message per call at a time).
        let idle = self.meter.is_idle();
        let mut started = self.framing.scan(data);
        // A message that ends in this frame is already in memory whole:
        // charged at once. Only one still arriving can be waited for.
        let arriving = started
            .last()
            .is_some_and(|m| !m.ends_in_frame)
            .then(|| started.pop().expect("checked above"));
        let budget = Arc::clone(&self.meter.budget);
        for message in started {
            self.meter
                .push(budget.take_now(message.bytes.min(self.max_message)));
        }
        let Some(arriving) = arriving else {
            return Poll::Ready(Some(Ok(frame)));
        };
        if arriving.bytes > self.max_message.saturating_add(5) {
            // tonic refuses it on this prefix, before reading its body;
            // waiting for the budget would hold up the whole line. (One
            // larger than the budget but allowed waits to go alone.)
            return Poll::Ready(Some(Ok(frame)));
        }
        let charge = if idle && self.watch.as_ref().is_some_and(|w| w.owes_output()) {
            Some(budget.take_now(arriving.bytes))
        } else {
            budget.try_take(arriving.bytes)
        };
        if let Some(charge) = charge {
            self.meter.push(charge);
            return Poll::Ready(Some(Ok(frame)));
        }
        // The bytes before this message's prefix end messages already paid
        // for: they go on now, or a call could wait on the budget while
        // holding a message it cannot finish.
        let data = frame.into_data().expect("a data frame");
        let (ahead, rest) = (data.slice(..arriving.start), data.slice(arriving.start..));
        self.waiting = Some(Waiting {
            frame: Frame::data(rest),
            charge: Box::pin(budget.take(arriving.bytes, self.patience)),
            _busy: self.watch.as_ref().map(CallWatch::busy),
        });
        if !ahead.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(ahead))));
        }
        self.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn charges_wait_in_line_for_room_and_give_up_when_nothing_moves() {
        let gauge = Gauge::default();
        let budget = InputBudget::new(100, gauge.clone());
        let first = budget.try_take(60).unwrap();
        assert!(budget.try_take(50).is_none());
        assert_eq!(gauge.get(), 60);
        let waiter = tokio::spawn(Arc::clone(&budget).take(50, Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        // 10 bytes fit, but a call is waiting: nobody jumps the line.
        assert!(budget.try_take(10).is_none());
        drop(first);
        let second = waiter.await.unwrap().unwrap();
        assert_eq!(gauge.get(), 50);
        let refused = Arc::clone(&budget)
            .take(60, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let mut merged = Charge::default();
        merged.absorb(second);
        merged.absorb(budget.try_take(10).unwrap());
        assert_eq!(gauge.get(), 60);
        drop(merged);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_big_message_is_not_passed_over_and_a_moving_line_is_not_refused() {
        let budget = InputBudget::new(100, Gauge::default());
        let held: Vec<Charge> = (0..4).map(|_| budget.try_take(25).unwrap()).collect();
        let big = tokio::spawn(Arc::clone(&budget).take(80, Duration::from_secs(5)));
        tokio::task::yield_now().await;
        let small = tokio::spawn(Arc::clone(&budget).take(10, Duration::from_secs(5)));
        let mut held = held.into_iter();
        // One charge back every 4 s: the line moves, slower than the
        // patience, and neither waiter is refused.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            drop(held.next());
            assert!(!big.is_finished() && !small.is_finished());
        }
        drop(held.next());
        let big = big.await.unwrap().unwrap();
        // 80 + 10 fit in 100: the small one came second and is served now.
        let small = small.await.unwrap().unwrap();
        drop((big, small));
        assert_eq!(budget.state().used, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_leaks_nothing_and_lets_the_next_in() {
        let budget = InputBudget::new(100, Gauge::default());
        let held = budget.try_take(60).unwrap();
        let impatient = tokio::spawn(Arc::clone(&budget).take(50, Duration::from_secs(1)));
        tokio::task::yield_now().await;
        let patient = tokio::spawn(Arc::clone(&budget).take(30, Duration::from_secs(60)));
        let refused = impatient.await.unwrap().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        // 60 + 30 fit once the one ahead is gone.
        let patient = patient.await.unwrap().unwrap();
        drop((held, patient));
        assert_eq!(budget.state().used, 0);
        assert!(budget.state().waiters.is_empty());
    }

    #[test]
    fn an_overdraft_counts_against_the_cap_until_given_back() {
        let budget = InputBudget::new(100, Gauge::default());
        let held = budget.try_take(90).unwrap();
        let over = budget.take_now(50);
        assert_eq!(budget.state().used, 140);
        assert!(budget.try_take(1).is_none(), "over the cap");
        drop(held);
        assert!(budget.try_take(60).is_none(), "the overdraft still counts");
        drop(over);
        assert!(budget.try_take(100).is_some());
    }

    fn prefix(len: u32) -> Vec<u8> {
        let mut p = vec![0u8];
        p.extend_from_slice(&len.to_be_bytes());
        p
    }

    #[test]
    fn framing_finds_each_message_once_wherever_the_frames_cut() {
        // Message A (3 bytes), an empty one, message B (10 bytes).
        let mut wire = prefix(3);
        wire.extend_from_slice(b"abc");
        wire.extend(prefix(0));
        wire.extend(prefix(10));
        wire.extend_from_slice(b"0123456789");
        let whole = Framing::default().scan(&wire);
        let at = |bytes, start, ends_in_frame| Started {
            bytes,
            start,
            ends_in_frame,
        };
        assert_eq!(
            whole,
            vec![at(8, 0, true), at(5, 8, true), at(15, 13, true)]
        );
        // Cut everywhere, including inside the prefixes.
        for cut in 1..wire.len() {
            let mut framing = Framing::default();
            let mut found = framing.scan(&wire[..cut]);
            let rest = framing.scan(&wire[cut..]);
            found.extend(rest);
            let sizes: Vec<usize> = found.iter().map(|m| m.bytes).collect();
            assert_eq!(sizes, vec![8, 5, 15], "cut at {cut}");
        }
        // A message whose body continues past the frame does not end in it.
        let mut framing = Framing::default();
        assert_eq!(
            framing.scan(&wire[..13]),
            vec![at(8, 0, true), at(5, 8, true)]
        );
        assert_eq!(framing.scan(&wire[13..20]), vec![at(15, 0, false)]);
        assert_eq!(framing.scan(&wire[20..]), vec![]);
        // A prefix cut by the frame starts, in the next frame, at 0.
        let mut framing = Framing::default();
        assert_eq!(framing.scan(&wire[..10]), vec![at(8, 0, true)]);
        assert_eq!(
            framing.scan(&wire[10..]),
            vec![at(5, 0, true), at(15, 3, true)]
        );
    }

    #[test]
    fn the_meter_hands_on_the_charges_of_decoded_messages_only() {
        let budget = InputBudget::new(1000, Gauge::default());
        let meter = InputMeter::new(&budget);
        meter.push(budget.try_take(10).unwrap());
        meter.push(budget.try_take(20).unwrap());
        meter.push(budget.try_take(40).unwrap());
        assert_eq!(meter.take().bytes, 0, "nothing decoded yet");
        meter.message_decoded();
        meter.message_decoded();
        let first_two = meter.take();
        assert_eq!(first_two.bytes, 30);
        drop(first_two);
        assert_eq!(
            budget.state().used,
            40,
            "the message still arriving keeps its charge"
        );
        meter.message_decoded();
        assert_eq!(meter.take().bytes, 40);
        assert_eq!(budget.state().used, 0);
    }

    /// A request body that yields `frames` (trailers too), in order.
    pub(crate) struct Frames(pub(crate) VecDeque<Frame<bytes::Bytes>>);

    impl Frames {
        /// A body of `chunks` as data frames.
        pub(crate) fn data(chunks: impl IntoIterator<Item = bytes::Bytes>) -> Self {
            Self(chunks.into_iter().map(Frame::data).collect())
        }
    }

    impl HttpBody for Frames {
        type Data = bytes::Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// A body whose one frame starts a 50-byte message (its prefix and 10
    /// of its 45 bytes), for a call watched by `watch`.
    fn starting_message(meter: &Arc<InputMeter>, watch: &Arc<CallWatch>) -> MeteredBody {
        let mut frame = prefix(45);
        frame.extend_from_slice(&[7; 10]);
        MeteredBody::new(
            Body::new(Frames::data([bytes::Bytes::from(frame)])),
            Arc::clone(meter),
            Some(Arc::clone(watch)),
            Duration::from_secs(5),
            1000,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_owes_its_client_output_is_not_made_to_wait() {
        let budget = InputBudget::new(100, Gauge::default());
        let full = budget.try_take(100).unwrap();
        let next_frame = |mut body: MeteredBody| async move {
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        };

        // Owing nothing, the call waits for room for the whole message.
        let meter = InputMeter::new(&budget);
        let watch = CallWatch::new(Duration::from_secs(30), Some(Arc::clone(&meter)));
        let waiting = tokio::spawn(next_frame(starting_message(&meter, &watch)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());

        // Owing its client a batch (whose client may be blocked in this
        // very write), it is admitted over the cap at once.
        let meter = InputMeter::new(&budget);
        let watch = CallWatch::new(Duration::from_secs(30), Some(Arc::clone(&meter)));
        let owed = watch.unsent_output();
        let frame = next_frame(starting_message(&meter, &watch)).await;
        assert!(frame.unwrap().unwrap().is_data());
        assert_eq!(budget.state().used, 150, "the whole message is charged");
        meter.message_decoded();
        drop((meter.take(), owed, full));
        assert_eq!(budget.state().used, 0);
    }

    /// Polls `body` for its next frame's bytes, or `None` while it waits.
    async fn poll_once(body: &mut MeteredBody) -> Option<Vec<u8>> {
        let polled = futures::poll!(std::future::poll_fn(
            |cx| Pin::new(&mut *body).poll_frame(cx)
        ));
        match polled {
            Poll::Ready(Some(Ok(frame))) => Some(frame.into_data().unwrap().to_vec()),
            Poll::Ready(other) => panic!("unexpected {other:?}"),
            Poll::Pending => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_a_paid_message_goes_on_while_the_next_waits() {
        let budget = InputBudget::new(100, Gauge::default());
        let meter = InputMeter::new(&budget);
        let watch = CallWatch::new(Duration::from_secs(30), Some(Arc::clone(&meter)));
        // Message 1 (25 bytes) starts in frame 1; frame 2 ends it and starts
        // message 2 (50 bytes), which does not fit beside the 60 held.
        let mut frame1 = prefix(20);
        frame1.extend_from_slice(&[1; 10]);
        let mut frame2 = vec![1u8; 10];
        frame2.extend(prefix(45));
        frame2.extend_from_slice(&[2; 5]);
        let frames = [frame1.clone(), frame2.clone()].map(bytes::Bytes::from);
        let mut body = MeteredBody::new(
            Body::new(Frames::data(frames)),
            Arc::clone(&meter),
            Some(watch),
            Duration::from_secs(5),
            1000,
        );
        assert_eq!(poll_once(&mut body).await, Some(frame1));
        let held = budget.try_take(60).unwrap();
        assert_eq!(budget.state().used, 85);
        // Message 1's last bytes come out at once, so it can be decoded.
        assert_eq!(poll_once(&mut body).await, Some(frame2[..10].to_vec()));
        assert_eq!(poll_once(&mut body).await, None, "message 2 waits for room");
        drop(held);
        assert_eq!(poll_once(&mut body).await, Some(frame2[10..].to_vec()));
        assert_eq!(budget.state().used, 75);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_over_the_size_limit_passes_uncharged_and_one_over_the_budget_goes_alone() {
        let budget = InputBudget::new(100, Gauge::default());
        let held = budget.try_take(100).unwrap();
        let body = |len: u32| {
            let mut frame = prefix(len);
            frame.extend_from_slice(&[3; 7]);
            let body = MeteredBody::new(
                Body::new(Frames::data([bytes::Bytes::from(frame.clone())])),
                InputMeter::new(&budget),
                None,
                Duration::from_secs(5),
                1000,
            );
            (body, frame)
        };
        // Over --max-message-bytes: through at once, for tonic to refuse on
        // its prefix.
        let (mut refused, frame) = body(1 << 30);
        assert_eq!(poll_once(&mut refused).await, Some(frame));
        assert_eq!(budget.state().used, 100);
        // Over the budget but allowed: waits to be the only message charged.
        let (mut alone, frame) = body(500);
        assert_eq!(poll_once(&mut alone).await, None);
        drop(held);
        assert_eq!(poll_once(&mut alone).await, Some(frame));
        assert_eq!(budget.state().used, 505);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_cap_goes_alone() {
        let budget = InputBudget::new(100, Gauge::default());
        let small = budget.try_take(30).unwrap();
        assert!(
            budget.try_take(150).is_none(),
            "only with nothing else charged"
        );
        let big = tokio::spawn(Arc::clone(&budget).take(150, Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!big.is_finished());
        drop(small);
        let big = big.await.unwrap().unwrap();
        assert_eq!(big.bytes, 150);
        assert!(budget.try_take(1).is_none(), "nothing fits beside it");
        drop(big);
        assert!(budget.try_take(100).is_some());
    }
}
