//! A streaming call's progress, so that a call that neither sends nor
//! reads ends after [`CallLimits::idle_timeout`](crate::CallLimits)
//! instead of holding its slot, its pool blocks and its buffers forever.
//!
//! The call guard creates one [`CallWatch`] per streaming call, puts it in
//! the request's extensions and runs its watchdog; the data path
//! ([`crate::stream`]) records progress: an input message decoded, an output
//! message taken by the client, a batch in the engine ([`CallWatch::busy`]).
//! When the watchdog finds no progress for the idle timeout it cancels the
//! call: the producer stops (returning its blocks), and the guard frees the
//! call's slot even if HTTP/2 flow control keeps the stream itself open.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::{Charge, InputMeter};

/// One call's progress clock.
#[derive(Debug)]
pub(crate) struct CallWatch {
    started: Instant,
    /// Milliseconds from `started` to the last progress.
    last_ms: AtomicU64,
    /// Batches in the engine (or other server-side work) right now.
    busy: AtomicUsize,
    /// Processed batches not yet wholly handed to the transport.
    unsent: AtomicUsize,
    cancel: CancellationToken,
    idle: Duration,
    /// The call's input bytes not yet handed on (none without the guard).
    meter: Option<Arc<InputMeter>>,
}

impl CallWatch {
    /// A watch that cancels after `idle` without progress, for a call
    /// whose received bytes `meter` counts.
    pub(crate) fn new(idle: Duration, meter: Option<Arc<InputMeter>>) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            unsent: AtomicUsize::new(0),
            cancel: CancellationToken::new(),
            idle,
            meter,
        })
    }

    /// A watch that never cancels (calls made without the guard, as in
    /// unit tests that drive the service directly).
    pub(crate) fn unwatched() -> Arc<Self> {
        Self::new(Duration::MAX, None)
    }

    /// The budget charge for the input received so far (see
    /// [`InputMeter::take`]); nothing for a call without the guard.
    pub(crate) fn input_charge(&self) -> Charge {
        self.meter.as_ref().map(|m| m.take()).unwrap_or_default()
    }

    /// Records that the gRPC decoder yielded the call's next input message
    /// (its charge is handed on with the next [`Self::input_charge`]).
    pub(crate) fn message_decoded(&self) {
        if let Some(meter) = &self.meter {
            meter.message_decoded();
        }
    }

    /// Marks a processed batch as owed to the client until the guard drops
    /// (when its last message is handed to the transport).
    pub(crate) fn unsent_output(self: &Arc<Self>) -> Unsent {
        self.unsent.fetch_add(1, Ordering::AcqRel);
        Unsent(Arc::clone(self))
    }

    /// Whether the call holds output its client has not taken yet, so a
    /// client that writes before it reads may be blocked on this call's
    /// input (see [`crate::budget`]).
    pub(crate) fn owes_output(&self) -> bool {
        self.unsent.load(Ordering::Acquire) > 0
    }

    /// Records progress now.
    pub(crate) fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Marks server-side work (an engine batch) until the guard drops;
    /// ending it counts as progress.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Whether the call was cancelled for making no progress.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves once the call is cancelled for making no progress.
    pub(crate) async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// The message a cancelled call ends with.
    pub(crate) fn status(&self) -> tonic::Status {
        tonic::Status::cancelled(format!(
            "the call made no progress for {} s (no message sent or read; \
             --idle-timeout): ended",
            self.idle.as_secs_f64()
        ))
    }

    /// Waits until the call has made no progress for the idle timeout while
    /// idle (no busy work), then cancels it. Returns at once for a watch
    /// that never cancels.
    pub(crate) async fn watchdog(&self) {
        if self.idle == Duration::MAX {
            return std::future::pending().await;
        }
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = self.started + last + self.idle;
            if Instant::now() >= due && self.busy.load(Ordering::Acquire) == 0 {
                self.cancel.cancel();
                return;
            }
            // Busy work past the deadline: look again a little later.
            let next = if Instant::now() >= due {
                Instant::now() + self.idle.min(Duration::from_secs(1))
            } else {
                due
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// Server-side work on a call in progress (see [`CallWatch::busy`]).
#[derive(Debug)]
pub(crate) struct Busy(Arc<CallWatch>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A processed batch not yet handed to the transport (see
/// [`CallWatch::unsent_output`]).
#[derive(Debug)]
pub(crate) struct Unsent(Arc<CallWatch>);

impl Drop for Unsent {
    fn drop(&mut self) {
        self.0.unsent.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_calls_are_cancelled_and_busy_or_moving_ones_are_not() {
        let watch = CallWatch::new(Duration::from_secs(10), None);
        let dog = tokio::spawn({
            let watch = Arc::clone(&watch);
            async move { watch.watchdog().await }
        });
        tokio::time::sleep(Duration::from_secs(8)).await;
        watch.touch();
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(!dog.is_finished(), "progress 8 s ago must keep the call");
        let busy = watch.busy();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!dog.is_finished(), "a batch in the engine is progress");
        drop(busy);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!dog.is_finished());
        tokio::time::sleep(Duration::from_secs(2)).await;
        dog.await.unwrap();
        watch.cancelled().await;
        assert_eq!(watch.status().code(), tonic::Code::Cancelled);
    }
}
