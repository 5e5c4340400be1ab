//! One iteration of the loop (SEMANTICS.md §1): pick what runs next, or
//! wait in `io_uring_enter` and reap; route each completion to what owns
//! it; run the one handler picked, and put it back afterwards.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::Duration;

use io_uring::cqueue;
use slotmap::KeyData;

use super::op::{Deferred, wake_or_defer};
use super::{
    Completion, Dispatch, Error, EventKind, Handle, IGNORE, Op, OpCallback, OpId, REAPED_SINGLY,
    Ready, State, TimerAction, TracePoint, WaitTimeout,
};
use crate::error::Result;
use crate::ring::ReapPasses;

/// After this many immediates and due timers run since the loop last
/// waited (one was always there, so it never had to), the next iteration
/// first submits what is queued and reaps what is ready, without blocking.
/// The dispatch order stays strict (SEMANTICS.md §1), but the kernel is not
/// starved: a task's operation, which needs no handler, completes even
/// while a timer is due on every iteration (a short timeout in a loop on a
/// slow machine), and submissions do not wait for the burst to end. When
/// the kernel has nothing for the loop this costs no syscall. Fds and
/// completions in the ready queue do not count: they came from a reap and
/// run out.
pub(super) const KERNEL_TURN_EVERY: u32 = 32;

/// Calls a handler taken out of its slot, then `restore`s it there even if
/// it panicked: a handler's panic reaches the caller of `run_once`, and the
/// loop stays whole (its watch still fires, its operation still ends).
#[inline]
fn call_then_restore<H>(
    mut handler: H,
    call: impl FnOnce(&mut H),
    restore: impl FnOnce(H),
) -> std::thread::Result<()> {
    let ran = catch_unwind(AssertUnwindSafe(|| call(&mut handler)));
    restore(handler);
    ran
}

/// Decrements the nesting depth even if a handler panics.
struct DepthGuard<'a>(&'a Cell<u32>);

impl Drop for DepthGuard<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Handle {
    /// Runs one iteration (SEMANTICS.md §1): all pending signal handlers, or
    /// else one immediate, or else one due timer, or else one fd handler or
    /// operation callback, waiting in `io_uring_enter` if nothing is ready.
    ///
    /// Returns [`Error::Nested`] from inside a handler unless nesting is
    /// allowed, and [`Error::WouldBlock`] in [`WaitTimeout::Never`] mode when
    /// nothing ran.
    pub fn run_once(&self) -> Result<()> {
        self.iterate(false)
    }

    /// [`Handle::run_once`] as if in [`WaitTimeout::Never`] mode, leaving the
    /// loop's wait timeout alone: the executor's turn while tasks are
    /// queued. A handler may change the timeout meanwhile, and a panic
    /// cannot leave the loop stuck in `Never`.
    pub(crate) fn run_once_without_blocking(&self) -> Result<()> {
        self.iterate(true)
    }

    #[inline]
    fn iterate(&self, never_block: bool) -> Result<()> {
        if self.inner.depth.get() > 0 && !self.inner.allow_nesting.get() {
            return Err(Error::Nested);
        }
        // One borrow of the state per step: this is the hot path. The pick
        // is written to `first` in place, not returned through the
        // closure's `Result`, which cost three copies of it.
        let mut first = None;
        let (mode, turned) = self.try_with(|st| {
            st.stats.iterations += 1;
            let turned = st.turns_in_user_space >= KERNEL_TURN_EVERY;
            if turned {
                st.kernel_turn()?;
            } else {
                first = st.pick_in_user_space();
            }
            let mode = if never_block {
                WaitTimeout::Never
            } else {
                st.wait_timeout
            };
            Ok((mode, turned))
        })?;
        self.inner.depth.set(self.inner.depth.get() + 1);
        let _depth = DepthGuard(&self.inner.depth);

        if turned {
            // Tasks whose operations the turn completed are woken now,
            // not at the next wait, which may be as far off. Before the
            // pick: a waker that panics must not drop a picked handler.
            self.run_deferred();
            first = self.with(|st| st.pick_in_user_space())?;
        }
        if let Some(d) = first {
            self.dispatch(d);
            return Ok(());
        }
        self.trace(TracePoint::BeforeWait);
        let tracing = self.inner.has_trace.get();
        // As above, the pick is written in place.
        let mut picked = None;
        let mut picked_in_the_wait = false;
        let waited = self.with(|st| {
            let waited = st.wait(mode);
            // With no trace hook and no deferred work, no user code runs
            // between the wait and the pick: pick in the same borrow.
            if waited.is_ok() && !tracing && st.deferred.is_empty() {
                picked_in_the_wait = true;
                picked = st.next_counted();
            }
            waited
        })?;
        if !picked_in_the_wait {
            self.trace(TracePoint::AfterWait);
            waited?;
            self.run_deferred();
            // A signal that interrupted the wait (EINTR) is counted already.
            self.with(|st| picked = st.next_counted())?;
        }
        if let Some(d) = picked {
            self.dispatch(d);
            return Ok(());
        }
        match mode {
            WaitTimeout::Never => Err(Error::WouldBlock),
            _ => Ok(()),
        }
    }

    /// Runs iterations until no event is left (see [`Handle::has_events`]).
    ///
    /// In [`WaitTimeout::Never`] mode this polls without blocking until then.
    pub fn run(&self) -> Result<()> {
        if self.inner.depth.get() > 0 && !self.inner.allow_nesting.get() {
            return Err(Error::Nested);
        }
        while self.has_events()? {
            match self.run_once() {
                Ok(()) | Err(Error::WouldBlock) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The kernel's part of an iteration, now, and nothing else: queued
    /// submissions (cancels included) go in, the kernel's deferred
    /// completion work runs, what it brings is reaped and routed, and the
    /// wakes and releases that routing deferred run. No handler runs and
    /// it never blocks. For a future bound to this loop that is awaited
    /// where the loop does not run (a task of another runtime of the
    /// thread): it settles what it needs from this loop without waiting for
    /// the loop to run again.
    pub(crate) fn turn_kernel_now(&self) -> Result<()> {
        self.try_with(|st| st.kernel_turn())?;
        self.run_deferred();
        Ok(())
    }

    /// Runs what the pick chose. Fd handlers and operation callbacks (nearly
    /// every event of a busy loop) are taken here; the rest goes on to
    /// `dispatch_other`, so that this stays small: with all of it inline,
    /// an fd event cost about 10 instructions more.
    fn dispatch(&self, d: Dispatch) {
        match d {
            Dispatch::Fd(id, handler, event) => {
                self.trace(TracePoint::BeforeHandler(EventKind::Fd));
                call_then_restore(
                    handler,
                    |h| h(self, event),
                    |h| drop(self.with(|st| st.restore_fd(id, h))),
                )
                .unwrap_or_else(|panic| resume_unwind(panic))
            }
            Dispatch::Op(id, callback, completion, last) => {
                self.trace(TracePoint::BeforeHandler(EventKind::Op));
                if last {
                    let mut callback = callback;
                    callback(self, completion);
                } else {
                    call_then_restore(
                        callback,
                        |c| c(self, completion),
                        |c| drop(self.with(|st| st.restore_op(id, c))),
                    )
                    .unwrap_or_else(|panic| resume_unwind(panic))
                }
            }
            d => self.dispatch_other(d),
        }
    }

    /// [`Handle::dispatch`] for signals, immediates, timers and due sleeps.
    #[inline(never)]
    fn dispatch_other(&self, d: Dispatch) {
        if let Dispatch::SleepWakes = d {
            // No handler: the woken tasks run in the executor's next pass.
            self.run_deferred();
            return;
        }
        self.trace(TracePoint::BeforeHandler(d.kind()));
        match d {
            Dispatch::SleepWakes => {}
            Dispatch::Signals(list) => {
                let mut list = list.into_iter();
                while let Some((id, handler, event)) = list.next() {
                    // An earlier handler of this batch may have removed this watch.
                    if !self.with(|st| st.signals.contains(id)).unwrap_or(false) {
                        drop(handler);
                        continue;
                    }
                    let ran = call_then_restore(
                        handler,
                        |h| h(self, event),
                        |h| drop(self.with(|st| st.signals.restore(id, h))),
                    );
                    if let Err(panic) = ran {
                        // The rest of the batch has not run: its deliveries
                        // stay pending, for the next iteration.
                        for (id, handler, event) in list {
                            drop(self.with(|st| st.signals.put_back(id, handler, event.count)));
                        }
                        resume_unwind(panic);
                    }
                }
            }
            Dispatch::Immediate(handler) | Dispatch::Timer(handler) => handler(self),
            // `dispatch` takes these itself.
            Dispatch::Fd(..) | Dispatch::Op(..) => {}
        }
    }

    /// Wakes the futures whose operations completed in the last reap and
    /// releases dropped futures' resources: user code, so it runs here,
    /// outside the state borrow, before the iteration picks a handler.
    fn run_deferred(&self) {
        // Look before taking: most iterations have nothing deferred, and
        // taking an empty list would drop its allocation.
        let Ok(Some(mut work)) =
            self.with(|st| (!st.deferred.is_empty()).then(|| std::mem::take(&mut st.deferred)))
        else {
            return;
        };
        let mut items = work.drain(..);
        while let Some(item) = items.next() {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| item.run())) {
                // A foreign waker panicked: the wakes and releases after it
                // still run, at the next iteration, ahead of newer ones.
                let rest: Vec<Deferred> = items.collect();
                let _ = self.with(|st| {
                    st.deferred.splice(0..0, rest);
                });
                resume_unwind(panic);
            }
        }
        drop(items);
        // Hand the allocation back for the next reap.
        let _ = self.with(|st| {
            if st.deferred.is_empty() {
                st.deferred = work;
            }
        });
    }
}

impl State {
    fn restore_op(&mut self, id: OpId, callback: OpCallback) -> Option<OpCallback> {
        if !self.parked.is_empty() {
            self.unpark(id);
        }
        match self.ops.get_mut(id) {
            Some(Op::User { callback: slot, .. }) => {
                *slot = Some(callback);
                None
            }
            _ => Some(callback),
        }
    }

    /// Puts the completions of `id` that waited while its callback ran back
    /// at the front of the ready queue, in their order: they were first.
    #[cold]
    fn unpark(&mut self, id: OpId) {
        let mine: Vec<Ready> = self
            .parked
            .iter()
            .filter(|(op, _)| *op == id)
            .map(|&(op, c)| Ready::Op(op, c))
            .collect();
        self.parked.retain(|(op, _)| *op != id);
        for ready in mine.into_iter().rev() {
            self.ready.push_front(ready);
        }
    }

    /// [`State::next_dispatch`], counting the handler it picks. Signals
    /// delivered since the last pick are collected first, as in tevent: the
    /// handler counted them, and looking is one atomic load.
    fn next_counted(&mut self) -> Option<Dispatch> {
        self.check_signals();
        let d = self.next_dispatch();
        if d.as_ref()
            .is_some_and(|d| !matches!(d, Dispatch::SleepWakes))
        {
            self.stats.handlers += 1;
        }
        d
    }

    /// The first due timer's handler; or, if sleeps come first, every due
    /// sleep up to the next handler timer, their wakes deferred together (a
    /// burst of due sleeps costs one iteration, not one each).
    fn pop_due_timer(&mut self) -> Option<Dispatch> {
        let now = self.clock_seen;
        let mut woke = false;
        while let Some((_, action)) = self
            .timers
            .pop_due_if(now, |a| !woke || matches!(a, TimerAction::Wake(_)))
        {
            match action {
                TimerAction::Handler(handler) => return Some(Dispatch::Timer(handler)),
                TimerAction::Wake(waker) => {
                    woke = true;
                    if let Some(waker) = waker {
                        wake_or_defer(&mut self.deferred, self.inline_waker, waker);
                    }
                }
            }
        }
        woke.then_some(Dispatch::SleepWakes)
    }

    /// Picks what runs next, in SEMANTICS.md §1 order, without waiting.
    fn next_dispatch(&mut self) -> Option<Dispatch> {
        if let Some(list) = self.signals.take_pending() {
            return Some(Dispatch::Signals(list));
        }
        if let Some(handler) = self.immediates.pop() {
            return Some(Dispatch::Immediate(handler));
        }
        // Reading the clock costs more than the rest of this function: skip
        // it when no timer is pending, and when the first deadline is at or
        // before a reading already taken (the clock never goes backwards, so
        // such a timer is due; a burst of due timers costs one reading).
        if let Some(deadline) = self.timers.next_deadline() {
            if deadline > self.clock_seen {
                self.clock_seen = self.now_ns();
            }
            if deadline <= self.clock_seen
                && let Some(d) = self.pop_due_timer()
            {
                return Some(d);
            }
        }
        while let Some(ready) = self.ready.pop_front() {
            match ready {
                Ready::Fd(id) => {
                    if let Some(d) = self.prepare_fd(id) {
                        return Some(d);
                    }
                }
                Ready::Op(id, completion) => {
                    let last = !cqueue::more(completion.flags);
                    let Some(Op::User { callback, .. }) = self.ops.get_mut(id) else {
                        continue;
                    };
                    let Some(cb) = callback.take() else {
                        // Its callback is running in an outer (nested)
                        // iteration: the completion waits for it to return,
                        // and the events behind it run meanwhile.
                        self.parked.push((id, completion));
                        continue;
                    };
                    if last {
                        self.remove_op(id);
                    }
                    return Some(Dispatch::Op(id, cb, completion, last));
                }
            }
        }
        None
    }

    /// Blocks in `io_uring_enter` until a completion, the next timer or the
    /// wait timeout, then reaps.
    fn wait(&mut self, mode: WaitTimeout) -> Result<()> {
        self.stats.waits += 1;
        self.turns_in_user_space = 0;
        let mut timeout = match mode {
            // Completions kept aside by a removal are already here, or
            // wakes a panicking waker left undone: reap (and whatever else
            // is ready) without blocking, and get on with them.
            _ if !self.cqes.is_empty() || !self.deferred.is_empty() => {
                self.ring.flush_unless_idle()?;
                self.reap();
                return Ok(());
            }
            WaitTimeout::After(d) => Some(d),
            WaitTimeout::Forever => None,
            WaitTimeout::Never => {
                self.ring.flush_unless_idle()?;
                self.reap();
                return Ok(());
            }
        };
        // `is_empty` first: inline, where `next_deadline` is a call into
        // the timer tree even when it is empty.
        if self.clock.is_none()
            && !self.timers.is_empty()
            && let Some(deadline) = self.timers.next_deadline()
        {
            let until = Duration::from_nanos(deadline.saturating_sub(self.now_ns()));
            timeout = Some(timeout.map_or(until, |t| t.min(until)));
        }
        self.ring.wait(timeout)?;
        self.reap();
        Ok(())
    }

    /// Submits what is queued and reaps what is ready, without blocking and
    /// without the syscall if the kernel has nothing for the loop: the
    /// kernel's part of an iteration, for when due handlers keep the loop
    /// from waiting.
    #[cold]
    fn kernel_turn(&mut self) -> Result<()> {
        self.turns_in_user_space = 0;
        self.ring.submit_unless_idle()?;
        self.reap();
        Ok(())
    }

    /// Moves completions from the ring (after any kept aside by a removal)
    /// into the loop's queues.
    pub(super) fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        if self.kept_scanned != 0 {
            self.kept_scanned = 0;
            self.kept_finals.clear();
        }
        let mut pass = ReapPasses::default();
        let mut scanned = cqes.len();
        while self.ring.reap_visible(&mut cqes, &mut pass) {
            // The kernel holds more. A multishot receive that this batch
            // takes to its limit is cancelled with the enter that brings
            // the rest, not after up to 64 more batches; the completions
            // are still routed in order, once all are in.
            if self.multi_task_ops > 0 {
                for cqe in &cqes[scanned..] {
                    self.note_unrouted(cqe.user_data(), cqe.flags());
                }
            }
            scanned = cqes.len();
            if self.ring.flush().is_err() {
                break;
            }
        }
        self.stats.overflow_flushes += pass.overflow_flushes;
        self.stats.completions += cqes.len() as u64;
        REAPED_SINGLY.set(cqes.len() <= 1);
        for cqe in cqes.drain(..) {
            self.route(cqe.user_data(), cqe.result(), cqe.flags());
        }
        self.cqes = cqes;
        if self.wake_pending {
            self.wake_pending = false;
            self.take_remote();
        }
        if self.signals.needs_read() {
            self.read_signals();
        }
    }

    /// [`State::next_counted`], counting a pick that did not come from a
    /// reap towards the next kernel turn: only immediates and timers can be
    /// due without end; fds and completions in the ready queue came from a
    /// reap and run out.
    ///
    /// When nothing at all is queued (every iteration that goes on to
    /// wait), this says so inline instead of calling `next_counted` to find
    /// out (about 30 instructions).
    #[inline]
    fn pick_in_user_space(&mut self) -> Option<Dispatch> {
        if self.ready.is_empty()
            && self.immediates.is_empty()
            && self.timers.is_empty()
            && self.signals.is_quiet()
        {
            return None;
        }
        let first = self.next_counted();
        if matches!(
            first,
            Some(Dispatch::Immediate(_) | Dispatch::Timer(_) | Dispatch::SleepWakes)
        ) {
            self.turns_in_user_space += 1;
        }
        first
    }

    /// Routes one completion by its `user_data`. Unknown, stale or malformed
    /// values are ignored: they can never reach a handler.
    ///
    /// `inline(always)`, into `reap`'s loop, for a watch's poll, the
    /// completion of nearly every fd event: as a call of its own, route's
    /// entry and exit (it has many arms to make room for) cost more than
    /// that arm. Every other completion goes on to `route_op`, which looks
    /// its entry up again.
    #[inline(always)]
    pub(super) fn route(&mut self, user_data: u64, result: i32, flags: u32) {
        if user_data == IGNORE {
            return;
        }
        let key = KeyData::from_ffi(user_data);
        if key.as_ffi() != user_data {
            return;
        }
        let id = OpId::from(key);
        match self.ops.get(id) {
            Some(&Op::FdPoll(watch)) => {
                let more = cqueue::more(flags);
                if !more {
                    // An `FdPoll` owns nothing; forgetting it skips the
                    // out-of-line drop of `Op` (this runs once per level
                    // event).
                    std::mem::forget(self.ops.remove(id));
                }
                self.on_poll(watch, id, result, more);
            }
            Some(_) => self.route_op(id, result, flags),
            None => {}
        }
    }

    /// [`State::route`] for every completion but a watch's poll. Not
    /// inlined: in `reap`'s loop its arms cost the poll's arm more
    /// instructions (about 15 per event) than the call and second lookup
    /// cost the others (about 10 per completion).
    #[inline(never)]
    fn route_op(&mut self, id: OpId, result: i32, flags: u32) {
        let more = cqueue::more(flags);
        let Some(op) = self.ops.get_mut(id) else {
            return;
        };
        match op {
            Op::Orphan => {
                if !more {
                    self.ops.remove(id);
                }
            }
            // `route` takes these itself.
            Op::FdPoll(_) => {}
            Op::Wake => {
                if !more {
                    self.ops.remove(id);
                    self.wake_armed = None;
                    let _ = self.arm_wake();
                }
                self.wake_pending = true;
            }
            Op::Signal => {
                if !more {
                    self.ops.remove(id);
                }
                self.signals.on_poll_complete(more);
            }
            Op::Task(_) => self.route_task_op(id, Completion { result, flags }, more),
            Op::MultiTask(_) => self.route_multi_task_op(id, Completion { result, flags }, more),
            Op::Readiness(_) => self.route_readiness(id, result, more),
            Op::User { done, once, .. } => {
                if *done {
                    return;
                }
                if !more {
                    *done = true;
                }
                let end_it = more && *once;
                self.ready
                    .push_back(Ready::Op(id, Completion { result, flags }));
                if end_it {
                    self.cancel_user_op(id);
                }
            }
        }
    }
}
