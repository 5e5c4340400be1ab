//! Signals the way tevent handles them: a process-wide handler counts each
//! delivery and wakes every loop through one eventfd that the loops poll
//! through the ring.
//!
//! Checking for deliveries at the start of an iteration is one atomic load,
//! so signals are dispatched first (SEMANTICS.md §1, §6) without a syscall
//! per iteration. Because the handler runs in whichever thread the kernel
//! picks, process-directed signals (`kill`, a terminal's ^C) work in
//! multi-threaded programs without blocking them anywhere: the signal must
//! simply not be blocked in every thread. While a signal is watched by any
//! loop, its previous disposition is saved; it is restored when the last
//! watch for it (in any loop) is removed.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use io_uring::{opcode, types};
use slotmap::{Key, SlotMap};

use super::{EventKind, Handle, Op, OpId, SignalHandler, State, TracePoint};
use crate::error::{Error, Result};
use crate::sys;

slotmap::new_key_type! {
    /// Names a signal watch of one loop.
    pub struct SignalId;
}

/// What a signal handler is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalEvent {
    /// The watch that fired.
    pub id: SignalId,
    /// The signal number.
    pub signo: i32,
    /// Deliveries seen since the handler last ran (at least 1).
    pub count: u32,
}

const NSIG: usize = 65;

struct SignalWatch {
    signo: i32,
    /// `None` while the handler runs.
    handler: Option<SignalHandler>,
    /// Deliveries that came while the handler ran (it ran a nested
    /// iteration): dispatched once it is back.
    missed: u32,
}

/// Deliveries of each signal since the process started, counted by the handler.
static DELIVERED: [AtomicU64; NSIG] = [const { AtomicU64::new(0) }; NSIG];
/// Bumped by the handler after each delivery: "something may be new".
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The eventfd the handler writes; -1 until the first watch is added.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// Created once, never closed: the handler may write it at any time.
static WAKE_FD_INIT: OnceLock<std::result::Result<RawFd, i32>> = OnceLock::new();

/// How many watches (in all loops) use each signal, and the disposition
/// that was in place before the first one.
struct Installed {
    watches: usize,
    previous: Option<libc::sigaction>,
}

// SAFETY: `libc::sigaction` is plain data (a function address, flags and a
// mask); it is only used under the mutex.
unsafe impl Send for Installed {}

static INSTALLED: Mutex<Vec<Installed>> = Mutex::new(Vec::new());

/// The signal handler. It does only async-signal-safe work: atomic
/// increments and one `write(2)`, keeping `errno` intact.
extern "C" fn on_signal(signo: libc::c_int) {
    // SAFETY: errno is thread-local; reading and restoring it is what a
    // handler must do around calls that may change it.
    let saved = unsafe { *libc::__errno_location() };
    if let Some(counter) = usize::try_from(signo).ok().and_then(|n| DELIVERED.get(n)) {
        counter.fetch_add(1, Ordering::SeqCst);
    }
    GENERATION.fetch_add(1, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        sys::eventfd_signal(fd);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

fn wake_fd() -> Result<RawFd> {
    let fd = WAKE_FD_INIT.get_or_init(|| {
        let fd = sys::eventfd().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        // Leaked on purpose: a handler running in another thread may write
        // to it at any moment, so it must never be closed and reused.
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        WAKE_FD.store(raw, Ordering::SeqCst);
        Ok(raw)
    });
    fd.map_err(|e| Error::Io(io::Error::from_raw_os_error(e)))
}

/// Installs the counting handler for `signo` (once for all loops).
fn install(signo: i32) -> Result<()> {
    let mut table = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if table.len() < NSIG {
        table.resize_with(NSIG, || Installed {
            watches: 0,
            previous: None,
        });
    }
    let slot = &mut table[signo as usize];
    if slot.watches == 0 {
        // SAFETY: zeroed sigaction structs are valid; the new one names an
        // extern "C" handler with the signature SA_SIGINFO-less handlers use.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a valid sigset to initialise.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: both pointers are valid sigaction structs.
        if unsafe { libc::sigaction(signo, &action, &mut previous) } != 0 {
            return Err(Error::Io(io::Error::last_os_error()));
        }
        slot.previous = Some(previous);
    }
    slot.watches += 1;
    Ok(())
}

/// Drops one use of `signo`; the last restores the previous disposition.
fn uninstall(signo: i32) {
    let mut table = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(slot) = table.get_mut(signo as usize) else {
        return;
    };
    slot.watches = slot.watches.saturating_sub(1);
    if slot.watches == 0
        && let Some(previous) = slot.previous.take()
    {
        // SAFETY: `previous` is what sigaction returned for this signal.
        unsafe { libc::sigaction(signo, &previous, std::ptr::null_mut()) };
    }
}

/// One loop's signal watches and the deliveries it has not dispatched yet.
pub(crate) struct Signals {
    watches: SlotMap<SignalId, SignalWatch>,
    /// How many of this loop's watches use each signal.
    watched: [u32; NSIG],
    /// `DELIVERED` values already accounted for.
    seen: [u64; NSIG],
    seen_generation: u64,
    counts: [u32; NSIG],
    pending: bool,
    /// The multishot poll on the wake eventfd.
    armed: Option<OpId>,
    poll_fired: bool,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            watches: SlotMap::with_key(),
            watched: [0; NSIG],
            seen: [0; NSIG],
            seen_generation: 0,
            counts: [0; NSIG],
            pending: false,
            armed: None,
            poll_fired: false,
        }
    }
}

impl Signals {
    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// Whether a pick has nothing to do here: no watch to collect
    /// deliveries for, and none pending.
    #[inline]
    pub fn is_quiet(&self) -> bool {
        self.watches.is_empty() && !self.pending
    }

    pub fn contains(&self, id: SignalId) -> bool {
        self.watches.contains_key(id)
    }

    #[inline]
    pub fn needs_read(&self) -> bool {
        self.poll_fired
    }

    /// The wake poll completed; `more` says whether it is still armed.
    pub fn on_poll_complete(&mut self, more: bool) {
        if !more {
            self.armed = None;
        }
        self.poll_fired = true;
    }

    /// Turns deliveries counted by the handler into pending counts. One
    /// atomic load when nothing happened.
    #[inline]
    fn collect(&mut self) {
        if self.watches.is_empty() {
            return;
        }
        let generation = GENERATION.load(Ordering::SeqCst);
        if generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        let per_signal = DELIVERED
            .iter()
            .zip(&self.watched)
            .zip(self.seen.iter_mut().zip(self.counts.iter_mut()));
        for ((delivered, &watched), (seen, count)) in per_signal {
            if watched == 0 {
                continue;
            }
            let delivered = delivered.load(Ordering::SeqCst);
            let new = delivered.wrapping_sub(*seen);
            if new > 0 {
                *seen = delivered;
                *count = count.saturating_add(u32::try_from(new).unwrap_or(u32::MAX));
                self.pending = true;
            }
        }
    }

    /// Takes the handlers of every signal delivered since the last dispatch.
    #[inline]
    pub fn take_pending(&mut self) -> Option<Vec<(SignalId, SignalHandler, SignalEvent)>> {
        if !self.pending {
            return None;
        }
        self.take_pending_slow()
    }

    fn take_pending_slow(&mut self) -> Option<Vec<(SignalId, SignalHandler, SignalEvent)>> {
        self.pending = false;
        let counts = std::mem::replace(&mut self.counts, [0; NSIG]);
        let mut list = Vec::new();
        for (id, w) in self.watches.iter_mut() {
            let count = counts[w.signo as usize].saturating_add(w.missed);
            if count == 0 {
                continue;
            }
            match w.handler.take() {
                Some(handler) => {
                    w.missed = 0;
                    let event = SignalEvent {
                        id,
                        signo: w.signo,
                        count,
                    };
                    list.push((id, handler, event));
                }
                // Its handler is running a nested iteration: the deliveries
                // wait for it to return (`restore`).
                None => w.missed = count,
            }
        }
        (!list.is_empty()).then_some(list)
    }

    /// Puts back a handler taken for a dispatch that did not reach it (an
    /// earlier handler of the batch panicked): its `count` deliveries are
    /// pending again.
    pub fn put_back(
        &mut self,
        id: SignalId,
        handler: SignalHandler,
        count: u32,
    ) -> Option<SignalHandler> {
        if let Some(w) = self.watches.get_mut(id) {
            w.missed = w.missed.saturating_add(count);
        }
        self.restore(id, handler)
    }

    pub fn restore(&mut self, id: SignalId, handler: SignalHandler) -> Option<SignalHandler> {
        match self.watches.get_mut(id) {
            Some(w) => {
                w.handler = Some(handler);
                if w.missed > 0 {
                    self.pending = true;
                }
                None
            }
            None => Some(handler),
        }
    }
}

impl Handle {
    /// Runs `handler` on the loop's thread in the first iteration after
    /// `signo` was delivered (to any thread of the process), before any other
    /// handler, with the number of deliveries since it last ran.
    ///
    /// The loop installs a counting signal handler while the signal is
    /// watched and restores the previous disposition when the last watch is
    /// removed. The signal must not be blocked in every thread. Every
    /// delivery wakes every loop of the process that watches a signal; a
    /// loop none of whose signals arrived just has an iteration that runs
    /// nothing.
    pub fn add_signal(
        &self,
        signo: i32,
        handler: impl FnMut(&Handle, SignalEvent) + 'static,
    ) -> Result<SignalId> {
        self.add_signal_since(signo, None, handler)
    }

    /// [`Handle::add_signal`]; if this loop watches `signo` for the first
    /// time, deliveries are counted from the process-wide count `since`
    /// (what another loop had accounted for) instead of from now.
    fn add_signal_since(
        &self,
        signo: i32,
        since: Option<u64>,
        handler: impl FnMut(&Handle, SignalEvent) + 'static,
    ) -> Result<SignalId> {
        if signo <= 0 || signo as usize >= NSIG || signo == libc::SIGKILL || signo == libc::SIGSTOP
        {
            return Err(Error::BadSignal(signo));
        }
        wake_fd()?;
        let id = self.try_with(|st| {
            let s = &mut st.signals;
            if s.watched[signo as usize] == 0 {
                // Deliveries before the first watch are not this loop's.
                s.collect();
                s.seen[signo as usize] =
                    since.unwrap_or_else(|| DELIVERED[signo as usize].load(Ordering::SeqCst));
                s.counts[signo as usize] = 0;
                install(signo)?;
            }
            s.watched[signo as usize] += 1;
            let id = s.watches.insert(SignalWatch {
                signo,
                handler: Some(Box::new(handler)),
                missed: 0,
            });
            st.arm_signal();
            Ok(id)
        })?;
        self.trace(TracePoint::Attach(EventKind::Signal));
        Ok(id)
    }

    /// Moves signal watch `id` of this loop to loop `to`, with `handler`
    /// (a future's watch, awaited where this loop does not run). Returns
    /// the new watch's id and the deliveries this loop had counted for the
    /// watch and not dispatched, less those `to` will hand the new watch
    /// itself; `to` counts from where this loop stopped, so none is lost or
    /// counted twice. The signal stays installed throughout: `to` adds its
    /// watch before this loop drops its own.
    pub(crate) fn move_signal(
        &self,
        id: SignalId,
        to: &Handle,
        handler: impl FnMut(&Handle, SignalEvent) + 'static,
    ) -> Result<(SignalId, u32)> {
        let (signo, since, count) = self.try_with(|st| {
            let s = &mut st.signals;
            s.collect();
            let w = s.watches.get(id).ok_or(Error::NotFound)?;
            let signo = w.signo as usize;
            Ok((
                w.signo,
                s.seen[signo],
                s.counts[signo].saturating_add(w.missed),
            ))
        })?;
        // A loop that watches the signal already has its own count: the
        // new watch shares it, from its first undispatched delivery on, as
        // a watch added there would. This loop's deliveries from there on
        // would reach the stream twice.
        let shared_from = to.with(|st| {
            let s = &st.signals;
            let signo = signo as usize;
            (s.watched[signo] > 0).then(|| s.seen[signo].wrapping_sub(u64::from(s.counts[signo])))
        })?;
        let count = match shared_from {
            Some(from) => {
                // This loop's `count` are the deliveries up to `since`:
                // those after `from` are `to`'s too (the counters only grow).
                let overlap = since.wrapping_sub(from);
                if overlap as i64 > 0 {
                    count.saturating_sub(u32::try_from(overlap).unwrap_or(u32::MAX))
                } else {
                    count
                }
            }
            None => count,
        };
        let new = to.add_signal_since(signo, Some(since), handler)?;
        let _ = self.remove_signal(id);
        Ok((new, count))
    }

    /// Removes a signal watch. When no watch is left for its signal in any
    /// loop, the signal's previous disposition is restored.
    pub fn remove_signal(&self, id: SignalId) -> Result<()> {
        let watch = self.try_with(|st| {
            let w = st.signals.watches.remove(id).ok_or(Error::NotFound)?;
            st.unwatch_signal(w.signo);
            Ok(w)
        })?;
        drop(watch);
        self.trace(TracePoint::Detach(EventKind::Signal));
        Ok(())
    }
}

impl State {
    fn arm_signal(&mut self) {
        let Some(&Ok(fd)) = WAKE_FD_INIT.get() else {
            return;
        };
        if self.signals.armed.is_some() || self.signals.watches.is_empty() {
            return;
        }
        let op = self.ops.insert(Op::Signal);
        self.signals.armed = Some(op);
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(op.data().as_ffi());
        self.push_internal(entry);
    }

    /// Picks up deliveries at the start of an iteration (one atomic load
    /// when there are none).
    #[inline]
    pub(super) fn check_signals(&mut self) {
        self.signals.collect();
    }

    /// After the wake poll fired: collect deliveries and keep the poll armed.
    pub(super) fn read_signals(&mut self) {
        self.signals.poll_fired = false;
        if let Some(&Ok(fd)) = WAKE_FD_INIT.get() {
            // Keeps the counter small so a re-armed poll does not fire at once.
            sys::eventfd_drain(fd);
        }
        self.signals.collect();
        self.arm_signal();
    }

    fn unwatch_signal(&mut self, signo: i32) {
        let s = &mut self.signals;
        let n = &mut s.watched[signo as usize];
        *n = n.saturating_sub(1);
        if *n == 0 {
            s.counts[signo as usize] = 0;
            uninstall(signo);
        }
        if s.watches.is_empty()
            && let Some(op) = s.armed.take()
        {
            self.cancel_poll(op);
        }
    }

    /// Stops all signal watching (loop teardown).
    pub(super) fn signals_shutdown(&mut self) {
        let signos: Vec<i32> = self.signals.watches.values().map(|w| w.signo).collect();
        self.signals.watches.clear();
        for signo in signos {
            self.unwatch_signal(signo);
        }
        if let Some(op) = self.signals.armed.take() {
            self.cancel_poll(op);
        }
    }
}
