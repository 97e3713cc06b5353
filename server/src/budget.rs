//! The server-wide budget on encoded input bytes in flight
//! ([`CallLimits::max_input_bytes_in_flight`](crate::CallLimits)).
//!
//! Every byte a client sends is charged from the moment its HTTP/2 frame is
//! read ([`MeteredBody`], which the call guard wraps around each request)
//! until the server is done with the message it belongs to: the input
//! batch has been through the engine ([`crate::stream::next_input`] hands
//! the message's [`Charge`] to whoever processes it), or the unary request
//! has been read. A call whose next frame does not fit waits, holding back
//! its HTTP/2 flow-control window so the client waits too, and fails with
//! `RESOURCE_EXHAUSTED` when room does not come within the idle timeout.
//! So however many clients connect, partial messages, decoded input
//! batches and messages queued for the engine together stay under one cap.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tonic::body::Body;
use tonic::Status;

use crate::watch::{Busy, CallWatch};

/// Bytes in flight across all calls, against a cap.
#[derive(Debug)]
pub(crate) struct InputBudget {
    cap: usize,
    used: Mutex<usize>,
    freed: Notify,
    /// Mirrors `used` for `/metrics` and the `stats` action.
    gauge: Gauge,
}

impl InputBudget {
    /// A budget of `cap` bytes whose use is mirrored in `gauge`.
    pub(crate) fn new(cap: usize, gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            cap,
            used: Mutex::new(0),
            freed: Notify::new(),
            gauge,
        })
    }

    /// Takes `bytes` if they fit now.
    fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if used.saturating_add(bytes) > self.cap {
            return None;
        }
        *used += bytes;
        self.gauge.set(*used as i64);
        Some(Charge {
            budget: Some(Arc::clone(self)),
            bytes,
        })
    }

    /// Takes `bytes`, waiting up to `patience` for room.
    async fn take(self: Arc<Self>, bytes: usize, patience: Duration) -> Result<Charge, Status> {
        let wait = async {
            loop {
                let freed = self.freed.notified();
                if let Some(charge) = self.try_take(bytes) {
                    return charge;
                }
                freed.await;
            }
        };
        tokio::time::timeout(patience, wait).await.map_err(|_| {
            Status::resource_exhausted(format!(
                "the server's budget of {} bytes of input in flight \
                 (--max-input-bytes-in-flight) stayed full for {:.0} s; retry later",
                self.cap,
                patience.as_secs_f64()
            ))
        })
    }

    fn release(&self, bytes: usize) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= bytes;
        self.gauge.set(*used as i64);
        drop(used);
        self.freed.notify_waiters();
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

/// One call's bytes received and not yet handed on with a whole message.
#[derive(Debug)]
pub(crate) struct InputMeter {
    budget: Arc<InputBudget>,
    pending: Mutex<Charge>,
}

impl InputMeter {
    pub(crate) fn new(budget: &Arc<InputBudget>) -> Arc<Self> {
        Arc::new(Self {
            budget: Arc::clone(budget),
            pending: Mutex::new(Charge::default()),
        })
    }

    /// The charge for everything received so far: the message just decoded
    /// (and, at most, the first frame of the next). Its holder keeps the
    /// bytes counted until it is done with the message.
    pub(crate) fn take(&self) -> Charge {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn add(&self, charge: Charge) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .absorb(charge);
    }
}

/// A request body that charges every data frame to its call's
/// [`InputMeter`], waiting for room (see the module docs).
pub(crate) struct MeteredBody {
    inner: Body,
    meter: Arc<InputMeter>,
    /// Marks the call busy while it waits on the budget, which is not the
    /// client's stall.
    watch: Option<Arc<CallWatch>>,
    patience: Duration,
    waiting: Option<Waiting>,
}

/// A frame read but not yet paid for.
struct Waiting {
    frame: Frame<bytes::Bytes>,
    charge: BoxFuture<'static, Result<Charge, Status>>,
    _busy: Option<Busy>,
}

impl MeteredBody {
    pub(crate) fn new(
        inner: Body,
        meter: Arc<InputMeter>,
        watch: Option<Arc<CallWatch>>,
        patience: Duration,
    ) -> Self {
        Self {
            inner,
            meter,
            watch,
            patience,
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
                self.meter.add(charge);
                frame
            })));
        }
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let Some(Ok(frame)) = frame else {
            return Poll::Ready(frame);
        };
        let bytes = frame.data_ref().map_or(0, bytes::Bytes::len);
        if let Some(charge) = self.meter.budget.try_take(bytes) {
            self.meter.add(charge);
            return Poll::Ready(Some(Ok(frame)));
        }
        let take = Arc::clone(&self.meter.budget).take(bytes, self.patience);
        self.waiting = Some(Waiting {
            frame,
            charge: Box::pin(take),
            _busy: self.watch.as_ref().map(CallWatch::busy),
        });
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
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn charges_wait_for_room_and_give_up_after_their_patience() {
        let gauge = Gauge::default();
        let budget = InputBudget::new(100, gauge.clone());
        let first = budget.try_take(60).unwrap();
        assert!(budget.try_take(50).is_none());
        assert_eq!(gauge.get(), 60);
        let waiter = tokio::spawn(Arc::clone(&budget).take(50, Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
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
}
