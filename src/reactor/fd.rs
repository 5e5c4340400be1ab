//! Fd watches: interest flags, and the mapping from poll results to the
//! flags a handler is given (SEMANTICS.md §2).

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign, Not};
use std::os::fd::{OwnedFd, RawFd};

use super::{FdHandler, OpId};

slotmap::new_key_type! {
    /// Names an fd watch of one loop. Stale ids (removed watches) are rejected,
    /// even when the fd number has been reused.
    pub struct FdId;
}

/// A set of READ, WRITE and ERROR: what a watch wants, and what a handler is told.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Interest(u8);

impl Interest {
    /// Nothing: the watch stays registered but is not monitored.
    pub const NONE: Interest = Interest(0);
    /// The fd is readable, or its peer hung up (the read then returns 0 or the error).
    pub const READ: Interest = Interest(1);
    /// The fd is writable.
    pub const WRITE: Interest = Interest(2);
    /// The fd reports an error or a hang-up.
    pub const ERROR: Interest = Interest(4);
    /// READ, WRITE and ERROR.
    pub const ALL: Interest = Interest(7);
    /// Not a condition but a mode, like epoll's `EPOLLET`: the watch is
    /// **edge-triggered**. Its handler runs when the fd becomes ready (once
    /// at once if it already is) and then only when new readiness arrives
    /// (new data, freed buffer space, a hang-up), not again merely because
    /// the fd is still ready. A handler must therefore read or write until
    /// `EAGAIN`, or keep track of what it left behind.
    ///
    /// In exchange the loop keeps one multishot `POLL_ADD` armed instead of
    /// re-arming a one-shot poll after every event, which saves an SQE and
    /// the kernel's poll set-up per event. Everything else is as for
    /// level-triggered watches: error mapping, fairness, close-means-closed.
    /// `Interest::READ | Interest::EDGE` is the usual form; EDGE alone is
    /// empty (not monitored).
    pub const EDGE: Interest = Interest(8);
    const CONDITIONS: u8 = 7;

    /// Whether every flag of `other` is in `self`.
    pub fn contains(self, other: Interest) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is in `self`.
    pub fn intersects(self, other: Interest) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether none of READ, WRITE and ERROR is set (EDGE alone is empty).
    pub fn is_empty(self) -> bool {
        self.0 & Self::CONDITIONS == 0
    }

    /// Whether the [`Interest::EDGE`] mode is set.
    pub fn is_edge(self) -> bool {
        self.0 & Self::EDGE.0 != 0
    }

    /// The conditions alone: READ, WRITE and ERROR, without the EDGE mode.
    pub fn conditions(self) -> Interest {
        Interest(self.0 & Self::CONDITIONS)
    }

    /// The raw bits (READ = 1, WRITE = 2, ERROR = 4, EDGE = 8).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Builds a set of conditions from raw bits (READ = 1, WRITE = 2,
    /// ERROR = 4), ignoring every other bit, EDGE included: the mode is
    /// chosen explicitly with `| Interest::EDGE`.
    pub fn from_bits_truncate(bits: u8) -> Interest {
        Interest(bits & Self::CONDITIONS)
    }

    /// The `poll(2)` mask to ask the kernel for. ERR and HUP are always
    /// reported; RDHUP is reported by io_uring even when not asked for.
    ///
    /// A table lookup: every re-arm of a level-triggered watch asks.
    #[inline]
    pub(crate) fn poll_mask(self) -> u32 {
        const MASKS: [u32; 8] = {
            let mut masks = [0; 8];
            let mut bits = 0;
            while bits < 8 {
                masks[bits] = Interest(bits as u8).poll_mask_of_conditions();
                bits += 1;
            }
            masks
        };
        MASKS[(self.0 & Self::CONDITIONS) as usize]
    }

    /// What [`Interest::poll_mask`] looks up.
    const fn poll_mask_of_conditions(self) -> u32 {
        let mut mask = 0;
        if self.0 & Interest::READ.0 != 0 {
            mask |= (libc::POLLIN | libc::POLLRDHUP) as u32;
        }
        if self.0 & Interest::WRITE.0 != 0 {
            mask |= libc::POLLOUT as u32;
        }
        if self.0 & Interest::ERROR.0 != 0 {
            mask |= libc::POLLRDHUP as u32;
        }
        mask
    }
}

impl BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        Interest(self.0 | rhs.0)
    }
}

impl BitOrAssign for Interest {
    fn bitor_assign(&mut self, rhs: Interest) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for Interest {
    type Output = Interest;
    fn bitand(self, rhs: Interest) -> Interest {
        Interest(self.0 & rhs.0)
    }
}

/// The complement of the conditions (READ, WRITE, ERROR); the EDGE mode is
/// dropped.
impl Not for Interest {
    type Output = Interest;
    fn not(self) -> Interest {
        Interest(!self.0 & Self::CONDITIONS)
    }
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("NONE");
        }
        let names = [(1, "READ"), (2, "WRITE"), (4, "ERROR"), (8, "EDGE")];
        let parts: Vec<&str> = names
            .iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&parts.join("|"))
    }
}

/// What an fd handler is told when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdEvent {
    /// The watch that fired.
    pub id: FdId,
    /// The watched fd.
    pub fd: RawFd,
    /// The conditions that hold: a non-empty subset of the watch's interest.
    pub ready: Interest,
}

/// What to do with a poll result, given the watch's interest at dispatch time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Call the handler with these flags.
    Call(Interest),
    /// Nothing this watch wants happened; poll again.
    Rearm,
    /// A WRITE-only watch saw an error or hang-up: it is not called, WRITE
    /// leaves its interest, and it stops being monitored.
    DisableWrite,
    /// A WRITE-only watch saw only the peer's half-close (RDHUP) and the fd is
    /// not writable. A one-shot poll would complete at once, forever; wait
    /// for the next wake-up with a multishot poll instead.
    WaitQuietly,
}

/// Maps `revents` (a POLL_ADD result) and the current interest to a
/// [`Decision`], following SEMANTICS.md §2 and tevent's epoll backend.
#[inline]
pub fn decide(revents: u32, interest: Interest) -> Decision {
    const IN: u32 = libc::POLLIN as u32;
    const OUT: u32 = libc::POLLOUT as u32;
    // The common case, on every event: readable or writable and nothing
    // else (no error, hang-up or RDHUP). Then IN gives READ and OUT gives
    // WRITE, as far as the interest asks for them, and nothing else
    // matters; `decide_all` gives the same, with a dozen more branches.
    if revents & !(IN | OUT) == 0 {
        let bits = (revents & IN) as u8 | ((revents & OUT) >> 1) as u8;
        let flags = Interest(bits & interest.0 & (Interest::READ.0 | Interest::WRITE.0));
        return if flags.is_empty() {
            Decision::Rearm
        } else {
            Decision::Call(flags)
        };
    }
    decide_all(revents, interest)
}

/// [`decide`] for any `revents`.
fn decide_all(revents: u32, interest: Interest) -> Decision {
    let err_hup = revents & (libc::POLLERR | libc::POLLHUP) as u32 != 0;
    let rdhup = revents & libc::POLLRDHUP as u32 != 0;
    let wants_read_or_error = interest.intersects(Interest::READ | Interest::ERROR);
    let mut flags = Interest::NONE;
    if err_hup || (rdhup && wants_read_or_error) {
        if !wants_read_or_error {
            return if interest.is_empty() {
                Decision::Rearm
            } else {
                Decision::DisableWrite
            };
        }
        flags = interest & (Interest::READ | Interest::ERROR);
    }
    if revents & libc::POLLIN as u32 != 0 {
        flags |= interest & Interest::READ;
    }
    if revents & libc::POLLOUT as u32 != 0 {
        flags |= interest & Interest::WRITE;
    }
    if !flags.is_empty() {
        Decision::Call(flags)
    } else if rdhup && interest.conditions() == Interest::WRITE {
        Decision::WaitQuietly
    } else {
        Decision::Rearm
    }
}

/// How a watch's poll is currently armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Armed {
    pub op: OpId,
    pub mask: u32,
    pub multishot: bool,
}

/// One registration of interest in an fd.
pub(crate) struct Watch {
    pub fd: RawFd,
    pub owned: Option<OwnedFd>,
    pub close_hook: Option<Box<dyn FnOnce(RawFd)>>,
    pub interest: Interest,
    /// `None` while the handler runs.
    pub handler: Option<FdHandler>,
    pub armed: Option<Armed>,
    /// Poll results not yet dispatched.
    pub revents: u32,
    /// Whether the watch sits in the ready queue.
    pub queued: bool,
    /// The errno that disarmed the watch (EBADF when the fd was closed behind
    /// the loop's back).
    pub error: Option<i32>,
    /// Polls of this watch that were cancelled and may not have completed
    /// yet (the kernel still holds the file until they do).
    pub cancelled: Vec<OpId>,
}

// ---- The loop's side of fd watches ----

use std::collections::HashSet;
use std::os::fd::AsRawFd;

use io_uring::{cqueue, opcode, types};
use slotmap::Key;

use super::{Dispatch, EventKind, Handle, Ready, State, TracePoint};
use crate::error::{Error, Result};
use crate::sys;

impl Handle {
    /// Watches an fd the loop takes ownership of. When the watch is removed
    /// (or the loop dropped), its poll is cancelled and the fd closed before
    /// the removal returns, so a peer sees EOF at once.
    ///
    /// ```
    /// use ringloop::{EventLoop, Interest};
    /// use std::os::unix::net::UnixStream;
    /// let lp = EventLoop::new()?;
    /// let (a, _b) = UnixStream::pair()?;
    /// let id = lp.add_fd(a.into(), Interest::READ, |lp, ev| {
    ///     lp.remove_fd(ev.id).unwrap();
    /// })?;
    /// lp.remove_fd(id)?; // _b now reads EOF
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_fd(
        &self,
        fd: OwnedFd,
        interest: Interest,
        handler: impl FnMut(&Handle, FdEvent) + 'static,
    ) -> Result<FdId> {
        let raw = fd.as_raw_fd();
        self.attach(raw, Some(fd), interest, Box::new(handler))
    }

    /// Watches an fd the caller keeps owning. The loop never closes it.
    ///
    /// # Safety
    /// `fd` must stay open until the watch is removed: a poll on a closed and
    /// reused fd number would watch the wrong file. Prefer [`Handle::add_fd`].
    pub unsafe fn add_raw_fd(
        &self,
        fd: RawFd,
        interest: Interest,
        handler: impl FnMut(&Handle, FdEvent) + 'static,
    ) -> Result<FdId> {
        if !sys::fd_is_open(fd) {
            return Err(Error::BadFd(fd));
        }
        self.attach(fd, None, interest, Box::new(handler))
    }

    fn attach(
        &self,
        fd: RawFd,
        owned: Option<OwnedFd>,
        interest: Interest,
        handler: super::FdHandler,
    ) -> Result<FdId> {
        let id = self.with(|st| {
            let id = st.watches.insert(Watch {
                fd,
                owned,
                close_hook: None,
                interest: Interest::NONE,
                handler: Some(handler),
                armed: None,
                revents: 0,
                queued: false,
                error: None,
                cancelled: Vec::new(),
            });
            st.set_interest(id, interest);
            id
        })?;
        self.trace(TracePoint::Attach(EventKind::Fd));
        Ok(id)
    }

    /// Sets a hook that runs exactly once when the watch is removed, after its
    /// poll has been cancelled; it is given the fd (to close it, say).
    pub fn set_close_hook(&self, id: FdId, hook: impl FnOnce(RawFd) + 'static) -> Result<()> {
        let old = self.try_with(|st| {
            let w = st.watches.get_mut(id).ok_or(Error::NotFound)?;
            Ok(w.close_hook.replace(Box::new(hook)))
        })?;
        drop(old);
        Ok(())
    }

    /// The watch's current interest (empty after a WRITE-only watch saw an
    /// error, or after the fd turned out to be closed).
    pub fn interest(&self, id: FdId) -> Result<Interest> {
        self.with(|st| {
            st.watches
                .get(id)
                .map(|w| w.interest)
                .ok_or(Error::NotFound)
        })?
    }

    /// Changes what the watch waits for. Takes effect for the next dispatch,
    /// also when called from inside any handler. Empty means "registered but
    /// not monitored".
    pub fn set_interest(&self, id: FdId, interest: Interest) -> Result<()> {
        self.with(|st| {
            let w = st.watches.get_mut(id).ok_or(Error::NotFound)?;
            w.error = None;
            st.set_interest(id, interest);
            Ok(())
        })?
    }

    /// The error that disarmed the watch, if any (EBADF when its fd was
    /// closed behind the loop's back).
    pub fn fd_error(&self, id: FdId) -> Result<Option<std::io::Error>> {
        self.with(|st| {
            let w = st.watches.get(id).ok_or(Error::NotFound)?;
            Ok(w.error.map(std::io::Error::from_raw_os_error))
        })?
    }

    /// The fd a watch watches.
    pub fn fd_of(&self, id: FdId) -> Result<RawFd> {
        self.with(|st| st.watches.get(id).map(|w| w.fd).ok_or(Error::NotFound))?
    }

    /// Removes a watch: its handler never runs again. If it owns its fd or has
    /// a close hook, the poll is cancelled and the fd closed (or the hook run)
    /// before this returns, so the peer already sees EOF.
    pub fn remove_fd(&self, id: FdId) -> Result<()> {
        let w = self.try_with(|st| st.take_watch(id).ok_or(Error::NotFound))?;
        self.trace(TracePoint::Detach(EventKind::Fd));
        drop(w.handler);
        if let Some(hook) = w.close_hook {
            hook(w.fd);
        }
        drop(w.owned);
        Ok(())
    }

    /// Removes a watch and hands its fd back instead of closing it. The poll
    /// is cancelled first, so the kernel holds no reference to the file.
    /// Returns `None` for a watch added with [`Handle::add_raw_fd`].
    ///
    /// A close hook (see [`Handle::set_close_hook`]) still runs, once, before
    /// this returns: the hook was promised to run when the watch goes, and
    /// for a raw watch it is often what closes the fd.
    pub fn take_fd(&self, id: FdId) -> Result<Option<OwnedFd>> {
        let mut w = self.try_with(|st| {
            let w = st.watches.get_mut(id).ok_or(Error::NotFound)?;
            let owned = w.owned.take();
            let mut w = st.take_watch(id).ok_or(Error::NotFound)?;
            if owned.is_some() {
                let _ = st.ring.flush();
            }
            w.owned = owned;
            Ok(w)
        })?;
        self.trace(TracePoint::Detach(EventKind::Fd));
        drop(w.handler.take());
        if let Some(hook) = w.close_hook.take() {
            hook(w.fd);
        }
        Ok(w.owned.take())
    }
}

/// [`State::arm`] for a watch already looked up: the hot path (putting a
/// handler back, then re-arming) looks the watch up once, not twice.
/// Inlined there (`restore_fd`); elsewhere one out-of-line copy
/// (`arm_watch_outlined`), so that `next_dispatch` does not carry two.
#[inline(always)]
fn arm_watch(
    ops: &mut slotmap::SlotMap<OpId, super::Op>,
    ring: &mut crate::ring::Ring,
    id: FdId,
    w: &mut Watch,
    multishot: bool,
) {
    if w.interest.is_empty() || w.armed.is_some() || w.queued || w.error.is_some() {
        return;
    }
    let multishot = multishot || w.interest.is_edge();
    let mask = w.interest.poll_mask();
    // `insert_with_key`, not `insert`: the closure carries the 8-byte id
    // and the entry is built in its slot, where `insert` moves a whole
    // `Op` (56 bytes) into the table's out-of-line insert.
    let op = ops.insert_with_key(|_| super::Op::FdPoll(id));
    w.armed = Some(Armed {
        op,
        mask,
        multishot,
    });
    let entry = opcode::PollAdd::new(types::Fd(w.fd), mask)
        .multi(multishot)
        .build()
        .user_data(op.data().as_ffi());
    super::push_internal(ring, entry);
}

/// [`arm_watch`], not inlined.
#[inline(never)]
fn arm_watch_outlined(
    ops: &mut slotmap::SlotMap<OpId, super::Op>,
    ring: &mut crate::ring::Ring,
    id: FdId,
    w: &mut Watch,
    multishot: bool,
) {
    arm_watch(ops, ring, id, w, multishot);
}

impl State {
    /// Sets a watch's interest, keeping the kernel's poll and the count of
    /// active watches in step.
    pub(super) fn set_interest(&mut self, id: FdId, interest: Interest) {
        let Some(w) = self.watches.get_mut(id) else {
            return;
        };
        match (w.interest.is_empty(), interest.is_empty()) {
            (true, false) => self.active_watches += 1,
            (false, true) => self.active_watches -= 1,
            _ => {}
        }
        w.interest = interest;
        // A multishot poll stays armed only for an edge-triggered watch
        // whose mask is unchanged; a level-triggered watch has one only
        // while it waits quietly (see `Decision::WaitQuietly`), which an
        // interest change ends.
        if let Some(armed) = w.armed
            && (interest.is_empty()
                || armed.multishot != interest.is_edge()
                || armed.mask != interest.poll_mask())
        {
            w.armed = None;
            self.cancel_poll(armed.op);
        }
        self.arm(id, false);
    }

    /// Arms a poll for the watch unless it is armed, waiting for dispatch,
    /// disarmed by an error or not interested in anything. Edge-triggered
    /// watches always get a multishot poll.
    pub(super) fn arm(&mut self, id: FdId, multishot: bool) {
        let Some(w) = self.watches.get_mut(id) else {
            return;
        };
        arm_watch_outlined(&mut self.ops, &mut self.ring, id, w, multishot);
    }

    /// Handles a poll completion for watch `id`. Inlined into `route`
    /// (see there); an error goes out of line, to `on_poll_error`.
    #[inline(always)]
    pub(super) fn on_poll(&mut self, id: FdId, op: super::OpId, result: i32, more: bool) {
        let Some(w) = self.watches.get_mut(id) else {
            return;
        };
        if w.armed.map(|a| a.op) != Some(op) {
            return;
        }
        if !more {
            w.armed = None;
        }
        if result < 0 {
            self.on_poll_error(id, result);
            return;
        }
        w.revents |= result as u32;
        if !w.queued {
            w.queued = true;
            self.ready.push_back(Ready::Fd(id));
        }
    }

    /// [`State::on_poll`] for a poll of watch `id` (its current one) that
    /// failed with `result`.
    #[cold]
    #[inline(never)]
    fn on_poll_error(&mut self, id: FdId, result: i32) {
        if result == -libc::ECANCELED {
            // Someone else cancelled it (a cancel-by-fd before a close, say):
            // poll again; a closed fd then reports EBADF.
            self.arm(id, false);
            return;
        }
        let Some(w) = self.watches.get_mut(id) else {
            return;
        };
        // EBADF: the fd was closed behind our back. Disarm; the loop goes on.
        w.error = Some(result.saturating_neg());
        let armed = w.armed.take();
        self.set_interest(id, Interest::NONE);
        if let Some(armed) = armed {
            self.cancel_poll(armed.op);
        }
    }

    /// Turns a ready watch into a handler call, or re-arms it when nothing it
    /// wants happened.
    pub(super) fn prepare_fd(&mut self, id: FdId) -> Option<Dispatch> {
        let w = self.watches.get_mut(id)?;
        w.queued = false;
        // A missing handler is running in an outer (nested) iteration;
        // `restore_fd` queues the watch again.
        w.handler.as_ref()?;
        let revents = std::mem::take(&mut w.revents);
        match decide(revents, w.interest) {
            Decision::Call(ready) => {
                let event = FdEvent {
                    id,
                    fd: w.fd,
                    ready,
                };
                let handler = w.handler.take()?;
                // An edge-triggered watch keeps its multishot poll (its poll
                // is always multishot: `set_interest` cancels any other), so
                // wake-ups while the handler runs queue the watch again. A
                // level watch's multishot (waiting quietly) has done its job.
                if !w.interest.is_edge()
                    && let Some(armed) = w.armed.take()
                {
                    self.cancel_poll(armed.op);
                }
                Some(Dispatch::Fd(id, handler, event))
            }
            Decision::Rearm => {
                arm_watch_outlined(&mut self.ops, &mut self.ring, id, w, false);
                None
            }
            Decision::WaitQuietly => {
                arm_watch_outlined(&mut self.ops, &mut self.ring, id, w, true);
                None
            }
            Decision::DisableWrite => {
                let armed = w.armed.take();
                self.set_interest(id, Interest::NONE);
                if let Some(armed) = armed {
                    self.cancel_poll(armed.op);
                }
                None
            }
        }
    }

    /// Puts a handler back after it ran and polls again (the re-arm rides in
    /// the next `io_uring_enter` and completes inline if the fd is still ready).
    pub(super) fn restore_fd(
        &mut self,
        id: FdId,
        handler: super::FdHandler,
    ) -> Option<super::FdHandler> {
        let Some(w) = self.watches.get_mut(id) else {
            return Some(handler);
        };
        w.handler = Some(handler);
        if w.revents != 0 && !w.queued {
            w.queued = true;
            self.ready.push_back(Ready::Fd(id));
        } else {
            arm_watch(&mut self.ops, &mut self.ring, id, w, false);
        }
        None
    }

    /// Removes a watch from the loop. If it owns its fd or has a close hook,
    /// the poll cancellation is pushed to the kernel now, so the caller can
    /// close the fd and the peer sees EOF at once.
    pub(super) fn take_watch(&mut self, id: FdId) -> Option<Watch> {
        self.set_interest(id, Interest::NONE);
        let w = self.watches.remove(id)?;
        let in_kernel: Vec<OpId> = w
            .cancelled
            .iter()
            .copied()
            .filter(|op| self.ops.contains_key(*op))
            .collect();
        if !in_kernel.is_empty() || w.owned.is_some() || w.close_hook.is_some() {
            // Whoever closes the fd next (the loop, a close hook, or the
            // caller of a raw watch) must find no poll holding the file.
            self.settle_cancels(&in_kernel);
        }
        Some(w)
    }

    /// Hands queued cancels to the kernel and waits (without blocking) until
    /// the cancelled polls in `ops` have completed, so the kernel no longer
    /// holds their files. With DEFER_TASKRUN a cancelled poll lets go only
    /// while task work runs inside `io_uring_enter(GETEVENTS)`, and each
    /// such call runs a bounded batch of it: with a backlog of other
    /// completions, one call may not reach ours.
    ///
    /// Completions that show up meanwhile are kept aside in `cqes` and routed
    /// by the next reap, as if they had arrived then: a removal does not
    /// change when other events run.
    pub(super) fn settle_cancels(&mut self, ops: &[super::OpId]) {
        let _ = self.ring.flush();
        // Each completion is looked at once, also across calls (a previous
        // removal's kept completions are in `kept_finals`), so that
        // settling thousands of watches, at teardown or one removal after
        // another, is linear, not quadratic.
        // The polls the kernel may still hold, by user_data. A poll no longer
        // in `ops` has already been routed its final completion, one in
        // `kept_finals` has had it kept aside. (Nothing is routed while this
        // runs: new completions are only kept aside.)
        let mut held: HashSet<u64> = ops
            .iter()
            .filter(|&&op| self.ops.contains_key(op))
            .map(|op| op.data().as_ffi())
            .filter(|ud| !self.kept_finals.contains(ud))
            .collect();
        self.note_kept_finals(&mut held);
        for _ in 0..4096 {
            if held.is_empty() {
                return;
            }
            if let Ok(flushes) = self.ring.reap(&mut self.cqes) {
                self.stats.overflow_flushes += flushes;
            }
            self.note_kept_finals(&mut held);
            if held.is_empty() || self.ring.flush().is_err() {
                return;
            }
        }
    }

    /// Records the final completions kept aside in `cqes` since last time,
    /// and takes their polls out of `held`.
    fn note_kept_finals(&mut self, held: &mut HashSet<u64>) {
        for c in &self.cqes[self.kept_scanned..] {
            if !cqueue::more(c.flags()) {
                held.remove(&c.user_data());
                self.kept_finals.insert(c.user_data());
            }
        }
        self.kept_scanned = self.cqes.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const IN: u32 = libc::POLLIN as u32;
    const OUT: u32 = libc::POLLOUT as u32;
    const ERR: u32 = libc::POLLERR as u32;
    const HUP: u32 = libc::POLLHUP as u32;
    const RDHUP: u32 = libc::POLLRDHUP as u32;
    use Decision::*;
    const R: Interest = Interest::READ;
    const W: Interest = Interest::WRITE;
    const E: Interest = Interest::ERROR;

    #[test]
    fn semantics_table() {
        // READ, peer closed (unix): IN|HUP|RDHUP -> READ
        assert_eq!(decide(IN | HUP | RDHUP, R), Call(R));
        // ERROR, data arrives: IN is never in the mask, but if reported anyway it is ignored.
        assert_eq!(decide(IN, E), Rearm);
        // ERROR, peer shutdown(SHUT_WR): RDHUP -> ERROR
        assert_eq!(decide(RDHUP, E), Call(E));
        // READ|ERROR, peer closed
        assert_eq!(decide(IN | HUP | RDHUP, R | E), Call(R | E));
        // WRITE, peer closed or pipe reader closed
        assert_eq!(decide(OUT | ERR | HUP | RDHUP, W), DisableWrite);
        assert_eq!(decide(ERR, W), DisableWrite);
        // WRITE, peer shutdown(SHUT_WR): still writable
        assert_eq!(decide(OUT | RDHUP, W), Call(W));
        assert_eq!(decide(RDHUP, W), WaitQuietly);
        // WRITE|ERROR, pipe reader closed
        assert_eq!(decide(OUT | ERR, W | E), Call(W | E));
        assert_eq!(decide(ERR, W | E), Call(E));
    }

    /// Every combination of the bits `decide` looks at, and one it ignores.
    fn all_revents() -> impl Iterator<Item = u32> {
        (0..64u32).map(|set| {
            [IN, OUT, ERR, HUP, RDHUP, 0x8000]
                .iter()
                .enumerate()
                .filter(|(i, _)| set & (1 << i) != 0)
                .fold(0, |acc, (_, b)| acc | b)
        })
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_table() {
        // With every interest, EDGE included.
        for revents in all_revents() {
            for bits in 0..16 {
                let interest = Interest(bits);
                assert_eq!(
                    decide(revents, interest),
                    decide_all(revents, interest),
                    "{revents:#x} {interest:?}"
                );
            }
        }
    }

    #[test]
    fn flags_are_always_a_nonempty_subset_of_interest() {
        for revents in all_revents() {
            for bits in 0..8 {
                let interest = Interest::from_bits_truncate(bits);
                if let Call(flags) = decide(revents, interest) {
                    assert!(!flags.is_empty());
                    assert!(
                        interest.contains(flags),
                        "{revents:#x} {interest:?} {flags:?}"
                    );
                }
            }
        }
    }
}
