//! Timers for futures: [`sleep`], [`sleep_until`], [`timeout`] and
//! [`interval`], on the loop's own timers.
//!
//! The loop never runs a timer before its deadline, so a [`Sleep`] never
//! completes early. Deadlines are on the loop's clock (the monotonic clock,
//! or a [`ManualClock`](crate::ManualClock) in tests). A duration too long to
//! represent (such as `Duration::MAX`) means "never": the sleep stays
//! pending, and a [`timeout`] with it never elapses.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ringloop::{rt, time};
//! rt::block_on(async {
//!     let start = Instant::now();
//!     time::sleep(Duration::from_millis(5)).await;
//!     assert!(start.elapsed() >= Duration::from_millis(5));
//!     let r = time::timeout(Duration::from_millis(5), std::future::pending::<()>()).await;
//!     assert!(r.is_err());
//! });
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::error::Error;
use crate::reactor::{Handle, TimerId};
use crate::rt;

/// The current time on the current runtime's clock (or the monotonic clock
/// when there is no runtime).
fn now() -> Instant {
    rt::current_handle()
        .and_then(|h| h.now().ok())
        .unwrap_or_else(Instant::now)
}

/// Completes no earlier than `duration` from now.
///
/// The sleep's timer is on the loop of the runtime it is first polled on;
/// polled on another runtime later (the first one idle or dropped), it
/// moves its timer there. Polled through a combinator's waker inside a
/// task of its own runtime, while that runtime runs, it waits as usual.
///
/// # Panics
/// When polled on a thread with no ringloop runtime (see [`rt::Runtime`]),
/// whether for the first time (there is no loop to put its timer on) or
/// after the runtime it was armed on was dropped (its timer went with that
/// loop, and no other takes it over). Polled by a task of another runtime
/// of the thread (or inside its `block_on`), it moves there instead, as
/// above.
///
/// Also when polled by another executor (`futures::executor::block_on`, a
/// waker that is no runtime task's) while no runtime of the thread runs
/// `block_on`, unless it has fired already: only its loop fires its timer,
/// and nothing runs that loop while that executor waits, so it would wait
/// for ever (its timer would go on the thread's newest runtime, idle too,
/// if it was not armed yet). So does a single such poll (`now_or_never`),
/// and an executor of one's own that drives the loop with
/// [`Handle::run_once`](crate::Handle::run_once) outside `block_on`: use
/// [`Handle::add_timer`](crate::Handle::add_timer) there.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep::new(now().checked_add(duration))
}

/// Completes no earlier than `deadline`. A deadline in the past completes on
/// the next loop iteration.
///
/// # Panics
/// As for [`sleep`].
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep::new(Some(deadline))
}

/// The future returned by [`sleep`] and [`sleep_until`]. Dropping it
/// cancels its timer.
///
/// # Panics
/// Polled outside a runtime, or by another executor while no runtime runs
/// (see [`sleep`]).
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    /// `None`: never completes.
    deadline: Option<Instant>,
    /// The loop's timer for it, once first polled: the timer holds the
    /// waker, and the timer's id stops being pending when it fires.
    armed: Option<(Handle, TimerId)>,
    /// Seen fired by a poll (its timer is gone).
    elapsed: bool,
}

impl Sleep {
    fn new(deadline: Option<Instant>) -> Sleep {
        Sleep {
            deadline,
            armed: None,
            elapsed: false,
        }
    }

    /// The deadline, or `None` if this sleep never completes.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the deadline has been reached (the timer ran).
    pub fn is_elapsed(&self) -> bool {
        self.elapsed
            || self
                .armed
                .as_ref()
                .is_some_and(|(h, id)| matches!(h.timer_deadline(*id), Err(Error::NotFound)))
    }

    /// Moves the deadline (also of a sleep that already completed, which
    /// then waits again).
    pub fn reset(&mut self, deadline: Instant) {
        self.disarm();
        self.deadline = Some(deadline);
        self.elapsed = false;
    }

    fn disarm(&mut self) {
        if let Some((h, id)) = self.armed.take() {
            // NotFound: it already fired (the id is stale, and a slot key's
            // generation keeps it from naming another timer). LoopGone:
            // nothing to cancel.
            let _ = h.cancel_timer(id);
        }
    }

    /// Puts the timer on the current runtime's loop, for a poll with `waker`.
    fn arm(&mut self, deadline: Instant, waker: &Waker) {
        let handle = match &self.armed {
            Some((h, _)) => h.clone(),
            None => match rt::current_handle() {
                Some(h) => h,
                None => panic!(
                    "ringloop::time::Sleep polled outside a ringloop runtime; \
                     run it with ringloop::rt::block_on or spawn it on a Runtime"
                ),
            },
        };
        // The current runtime may be an idle one, which nothing runs while
        // another executor waits.
        if let rt::PolledBy::NoRuntime = rt::polled_by(&handle, waker) {
            polled_by_another_executor();
        }
        match handle.add_sleep_timer_at(deadline) {
            Ok(id) => self.armed = Some((handle, id)),
            // Too far away to represent: never fires.
            Err(Error::DeadlineOverflow) => self.deadline = None,
            Err(e) => panic!("ringloop::time::Sleep: cannot add a timer: {e}"),
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.elapsed {
            return Poll::Ready(());
        }
        // On every poll: a compare and two loads for a runtime's task; a
        // waker that is no task's costs the look-up of the current runtime.
        if let Some((h, _)) = &self.armed {
            match rt::polled_by(h, cx.waker()) {
                rt::PolledBy::ItsRuntime => {}
                // Polled on another runtime than the one it was armed on:
                // only a loop that runs fires timers, and this thread now
                // runs that one, so the timer moves there (unless it fired).
                // Also from a loop that is gone.
                rt::PolledBy::Another(_) => {
                    if self.is_elapsed() {
                        self.elapsed = true;
                        self.armed = None;
                        return Poll::Ready(());
                    }
                    self.disarm();
                }
                // Another executor, no runtime running: nothing fires the
                // timer while it waits (unless it fired already). A loop
                // that is gone has no timer left: `poll_sleep_timer` says so.
                rt::PolledBy::NoRuntime => {
                    if self.is_elapsed() {
                        self.elapsed = true;
                        self.armed = None;
                        return Poll::Ready(());
                    }
                    if h.is_alive() {
                        polled_by_another_executor();
                    }
                }
            }
        }
        if self.armed.is_none()
            && let Some(deadline) = self.deadline
        {
            self.arm(deadline, cx.waker());
        }
        let Some((h, id)) = &self.armed else {
            // Too far away to represent: never fires.
            return Poll::Pending;
        };
        match h.poll_sleep_timer(*id, cx.waker()) {
            Ok(Poll::Ready(())) => {
                self.elapsed = true;
                self.armed = None;
                Poll::Ready(())
            }
            Ok(Poll::Pending) => Poll::Pending,
            // The timer can never fire: waiting would hang for ever.
            Err(e) => panic!("ringloop::time::Sleep polled after its runtime was dropped: {e}"),
        }
    }
}

/// The panic of a sleep polled by another executor while no runtime of the
/// thread runs `block_on` (see [`sleep`]).
#[cold]
#[track_caller]
fn polled_by_another_executor() -> ! {
    panic!(
        "ringloop::time::Sleep polled by another executor while no ringloop runtime runs on \
         this thread: only its loop fires its timer, and nothing runs that loop while this \
         executor waits (it would hang); await the sleep inside Runtime::block_on or one of \
         its tasks"
    )
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if !self.elapsed {
            self.disarm();
        }
    }
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .field("elapsed", &self.is_elapsed())
            .finish()
    }
}

/// The error of a [`timeout`] whose deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(());

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for std::io::Error {
    fn from(e: Elapsed) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, e)
    }
}

/// Runs `future` with a time limit: its output, or [`Elapsed`] if `duration`
/// passes first (the future is then dropped with the `Timeout`).
///
/// The future is always polled before the deadline is checked, so a ready
/// future wins even with a zero duration. `Duration::MAX` never elapses.
///
/// # Panics
/// When its sleep does (see [`sleep`]): polled, with `future` pending,
/// outside a runtime or by another executor while no runtime runs.
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep(duration),
    }
}

/// Like [`timeout`], with a deadline.
///
/// # Panics
/// As for [`timeout`].
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep_until(deadline),
    }
}

pin_project! {
    /// The future returned by [`timeout`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: Sleep,
    }
}

impl<F> Timeout<F> {
    /// The wrapped future.
    pub fn get_ref(&self) -> &F {
        &self.future
    }

    /// Unwraps the future, dropping the timer.
    pub fn into_inner(self) -> F {
        self.future
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed(()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A stream of instants `period` apart, the first one now.
///
/// A zero period is treated as 1 ns. Ticks missed because the task was busy
/// are skipped: the next tick comes one period after the late one.
///
/// # Panics
/// Its ticks are a [`Sleep`]'s: ticked outside a runtime, or by another
/// executor while no runtime runs, it panics as the sleep does (see
/// [`sleep`]).
pub fn interval(period: Duration) -> Interval {
    interval_at(now(), period)
}

/// Like [`interval`], with the first tick at `start`.
///
/// # Panics
/// As for [`interval`].
pub fn interval_at(start: Instant, period: Duration) -> Interval {
    Interval {
        sleep: sleep_until(start),
        period: period.max(Duration::from_nanos(1)),
    }
}

/// The stream returned by [`interval`]; each item is the tick's deadline.
#[derive(Debug)]
#[must_use = "streams do nothing unless polled"]
pub struct Interval {
    sleep: Sleep,
    period: Duration,
}

impl Interval {
    /// Waits for the next tick.
    ///
    /// # Panics
    /// As for [`interval`].
    pub async fn tick(&mut self) -> Instant {
        std::future::poll_fn(|cx| self.poll_tick(cx)).await
    }

    /// Polls for the next tick.
    ///
    /// # Panics
    /// As for [`interval`].
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<Instant> {
        let Some(tick) = self.sleep.deadline() else {
            // Never fires.
            return Poll::Pending;
        };
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let now = now();
                match tick.checked_add(self.period) {
                    Some(next) => self.sleep.reset(if next <= now {
                        now.checked_add(self.period).unwrap_or(next)
                    } else {
                        next
                    }),
                    None => {
                        self.sleep.disarm();
                        self.sleep.deadline = None;
                    }
                }
                Poll::Ready(tick)
            }
        }
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
}

impl Stream for Interval {
    type Item = Instant;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Instant>> {
        self.get_mut().poll_tick(cx).map(Some)
    }
}
