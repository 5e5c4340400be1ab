//! The loop's side of timers and immediates.

use std::cell::Cell;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::timer::ASAP;
use super::{EventKind, Handle, ImmediateId, State, TimerAction, TimerId, TracePoint};
use crate::error::{Error, Result};

/// A clock for tests: timers follow it instead of the monotonic clock.
///
/// Time only moves when [`ManualClock::advance`] is called. Waits in the
/// kernel are not shortened by pending timers, so drive such a loop with
/// [`WaitTimeout::Never`](super::WaitTimeout::Never).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Rc<Cell<Duration>>);

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        self.0.set(self.0.get().saturating_add(by));
    }

    /// Time since the clock was created.
    pub fn elapsed(&self) -> Duration {
        self.0.get()
    }
}

impl State {
    /// The loop's clock: nanoseconds since its epoch (or on its manual
    /// clock), plus one. Deadline 0 means "as soon as possible"; starting
    /// at 1 keeps every reading after it, so that a deadline of "now" is
    /// due at once even at a manual clock's start, when it reads zero.
    pub(super) fn now_ns(&self) -> u64 {
        let elapsed = match &self.clock {
            Some(manual) => manual.elapsed(),
            None => self.epoch.elapsed(),
        };
        u64::try_from(elapsed.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// A deadline on the loop's clock (see [`State::now_ns`]); a deadline
    /// in the past becomes 1 ns, due at once (after "as soon as possible").
    fn deadline_at(&self, at: Instant) -> Result<u64> {
        let since = at.saturating_duration_since(self.epoch);
        let ns = u64::try_from(since.as_nanos()).map_err(|_| Error::DeadlineOverflow)?;
        ns.checked_add(1).ok_or(Error::DeadlineOverflow)
    }

    fn deadline_after(&self, after: Duration) -> Result<u64> {
        let ns = u64::try_from(after.as_nanos()).map_err(|_| Error::DeadlineOverflow)?;
        self.now_ns().checked_add(ns).ok_or(Error::DeadlineOverflow)
    }

    /// The instant a reading of the loop's clock stands for.
    pub(super) fn instant_of(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns.saturating_sub(1))
    }
}

impl Handle {
    /// Runs `handler` once, no earlier than `after` from now on the
    /// monotonic clock. Equal deadlines fire in the order added.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use ringloop::EventLoop;
    /// let lp = EventLoop::new()?;
    /// let start = Instant::now();
    /// lp.add_timer(Duration::from_millis(5), move |_| {
    ///     assert!(start.elapsed() >= Duration::from_millis(5)); // never early
    /// })?;
    /// let doomed = lp.add_timer(Duration::from_millis(1), |_| unreachable!())?;
    /// lp.cancel_timer(doomed)?;
    /// lp.run()?; // returns once the timer ran: nothing is left
    /// # Ok::<(), ringloop::Error>(())
    /// ```
    pub fn add_timer(
        &self,
        after: Duration,
        handler: impl FnOnce(&Handle) + 'static,
    ) -> Result<TimerId> {
        let id = self.try_with(|st| {
            let deadline = st.deadline_after(after)?;
            Ok(st
                .timers
                .add(deadline, TimerAction::Handler(Box::new(handler))))
        })?;
        self.trace(TracePoint::Attach(EventKind::Timer));
        Ok(id)
    }

    /// Runs `handler` once, no earlier than `at`. A deadline in the past
    /// fires on the next iteration.
    pub fn add_timer_at(
        &self,
        at: Instant,
        handler: impl FnOnce(&Handle) + 'static,
    ) -> Result<TimerId> {
        let id = self.try_with(|st| {
            let deadline = st.deadline_at(at)?;
            Ok(st
                .timers
                .add(deadline, TimerAction::Handler(Box::new(handler))))
        })?;
        self.trace(TracePoint::Attach(EventKind::Timer));
        Ok(id)
    }

    /// Runs `handler` in the timer phase as soon as possible, before every
    /// timer with a real deadline, in the order added.
    pub fn add_timer_asap(&self, handler: impl FnOnce(&Handle) + 'static) -> Result<TimerId> {
        let id = self.with(|st| st.timers.add(ASAP, TimerAction::Handler(Box::new(handler))))?;
        self.trace(TracePoint::Attach(EventKind::Timer));
        Ok(id)
    }

    /// Adds a timer for a future (`time::Sleep`): when due it wakes the
    /// waker given to [`Handle::poll_sleep_timer`] instead of running a
    /// handler, and a burst of due sleeps takes one iteration. No boxed
    /// handler and no shared flag: the future learns that the timer fired
    /// because its id is no longer pending. [`Handle::cancel_timer`] removes
    /// it.
    pub(crate) fn add_sleep_timer_at(&self, at: Instant) -> Result<TimerId> {
        let id = self.try_with(|st| {
            let deadline = st.deadline_at(at)?;
            Ok(st.timers.add(deadline, TimerAction::Wake(None)))
        })?;
        self.trace(TracePoint::Attach(EventKind::Timer));
        Ok(id)
    }

    /// `Ready` once the sleep timer `id` has fired (its id is no longer
    /// pending); otherwise keeps `waker` to wake when it fires. Fails only
    /// when the loop cannot be reached (gone, forked): the timer never fires.
    pub(crate) fn poll_sleep_timer(&self, id: TimerId, waker: &Waker) -> Result<Poll<()>> {
        let (poll, replaced) = self.with(|st| match st.timers.payload_mut(id) {
            Some(TimerAction::Wake(slot)) => match slot {
                Some(w) if w.will_wake(waker) => (Poll::Pending, None),
                _ => (Poll::Pending, slot.replace(waker.clone())),
            },
            // Not a sleep's id: never ready, like an id that fired cannot be.
            Some(TimerAction::Handler(_)) => (Poll::Pending, None),
            None => (Poll::Ready(()), None),
        })?;
        // A waker is foreign code: dropped outside the state borrow.
        drop(replaced);
        Ok(poll)
    }

    /// Moves a pending timer to `after` from now, behind timers with an
    /// equal deadline.
    pub fn update_timer(&self, id: TimerId, after: Duration) -> Result<()> {
        self.with(|st| {
            let deadline = st.deadline_after(after)?;
            if st.timers.update(id, deadline) {
                Ok(())
            } else {
                Err(Error::NotFound)
            }
        })?
    }

    /// Moves a pending timer to `at`, behind timers with an equal deadline.
    pub fn update_timer_at(&self, id: TimerId, at: Instant) -> Result<()> {
        self.with(|st| {
            let deadline = st.deadline_at(at)?;
            if st.timers.update(id, deadline) {
                Ok(())
            } else {
                Err(Error::NotFound)
            }
        })?
    }

    /// Cancels a pending timer: it never runs.
    pub fn cancel_timer(&self, id: TimerId) -> Result<()> {
        let handler = self.try_with(|st| st.timers.cancel(id).ok_or(Error::NotFound))?;
        drop(handler);
        self.trace(TracePoint::Detach(EventKind::Timer));
        Ok(())
    }

    /// When a pending timer is due, if it is pending.
    pub fn timer_deadline(&self, id: TimerId) -> Result<Instant> {
        self.with(|st| {
            let ns = st.timers.deadline(id).ok_or(Error::NotFound)?;
            Ok(st.instant_of(ns))
        })?
    }

    /// Schedules `handler` to run on a later iteration, before timers and
    /// fds, after the immediates already scheduled.
    ///
    /// ```
    /// use std::{cell::RefCell, rc::Rc};
    /// use ringloop::EventLoop;
    /// let lp = EventLoop::new()?;
    /// let order = Rc::new(RefCell::new(Vec::new()));
    /// let o = order.clone();
    /// lp.add_timer_asap(move |_| o.borrow_mut().push("timer"))?;
    /// for name in ["first", "second"] {
    ///     let o = order.clone();
    ///     lp.add_immediate(move |_| o.borrow_mut().push(name))?;
    /// }
    /// lp.run()?;
    /// assert_eq!(*order.borrow(), ["first", "second", "timer"]);
    /// # Ok::<(), ringloop::Error>(())
    /// ```
    pub fn add_immediate(&self, handler: impl FnOnce(&Handle) + 'static) -> Result<ImmediateId> {
        let id = self.with(|st| st.immediates.push(Box::new(handler)))?;
        self.trace(TracePoint::Attach(EventKind::Immediate));
        Ok(id)
    }

    /// Moves a scheduled immediate to the tail of the queue; it still runs once.
    pub fn reschedule_immediate(&self, id: ImmediateId) -> Result<()> {
        if self.with(|st| st.immediates.reschedule(id))? {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// Cancels a scheduled immediate: it never runs.
    pub fn cancel_immediate(&self, id: ImmediateId) -> Result<()> {
        let handler = self.try_with(|st| st.immediates.cancel(id).ok_or(Error::NotFound))?;
        drop(handler);
        self.trace(TracePoint::Detach(EventKind::Immediate));
        Ok(())
    }
}
