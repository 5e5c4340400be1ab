//! Signals through a signalfd polled by the ring.
//!
//! Watched signals are blocked on the loop's thread and read from one
//! signalfd; each iteration that sees deliveries runs every watching handler
//! first, with the number of deliveries coalesced since the last run.
//! Process-directed signals reach the signalfd only if every other thread
//! blocks them too (block them before spawning threads).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use io_uring::{opcode, types};
use slotmap::{Key, SlotMap};

use super::{EventKind, Handle, Op, OpId, SignalHandler, State, TracePoint};
use crate::error::{Error, Result};

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
    handler: Option<SignalHandler>,
}

pub(crate) struct Signals {
    fd: Option<OwnedFd>,
    set: libc::sigset_t,
    blocked_by_us: Vec<i32>,
    watches: SlotMap<SignalId, SignalWatch>,
    counts: [u32; NSIG],
    pending: bool,
    armed: Option<OpId>,
    read_needed: bool,
}

fn empty_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    unsafe {
        let mut set = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

fn one_signal(signo: i32) -> libc::sigset_t {
    let mut set = empty_set();
    // SAFETY: `set` is initialised; signo was validated by the caller.
    unsafe { libc::sigaddset(&mut set, signo) };
    set
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            fd: None,
            set: empty_set(),
            blocked_by_us: Vec::new(),
            watches: SlotMap::with_key(),
            counts: [0; NSIG],
            pending: false,
            armed: None,
            read_needed: false,
        }
    }
}

impl Signals {
    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    pub fn contains(&self, id: SignalId) -> bool {
        self.watches.contains_key(id)
    }

    #[inline]
    pub fn needs_read(&self) -> bool {
        self.read_needed
    }

    pub fn on_poll_complete(&mut self) {
        self.armed = None;
        self.read_needed = true;
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
        let list: Vec<_> = self
            .watches
            .iter_mut()
            .filter(|(_, w)| counts[w.signo as usize] > 0)
            .filter_map(|(id, w)| {
                let count = counts[w.signo as usize];
                let handler = w.handler.take()?;
                Some((
                    id,
                    handler,
                    SignalEvent {
                        id,
                        signo: w.signo,
                        count,
                    },
                ))
            })
            .collect();
        (!list.is_empty()).then_some(list)
    }

    pub fn restore(&mut self, id: SignalId, handler: SignalHandler) -> Option<SignalHandler> {
        match self.watches.get_mut(id) {
            Some(w) => {
                w.handler = Some(handler);
                None
            }
            None => Some(handler),
        }
    }

    /// Points the signalfd at the current set (creating it if needed).
    fn update_fd(&mut self) -> Result<()> {
        let current = self.fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        // SAFETY: `set` is initialised; signalfd either updates `current`
        // or returns a new fd that we then own.
        let fd =
            unsafe { libc::signalfd(current, &self.set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if current < 0 {
            // SAFETY: a fresh fd owned by nobody else.
            self.fd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        Ok(())
    }
}

impl Handle {
    /// Runs `handler` on the loop's thread each iteration after `signo` was
    /// delivered, before any other handler. The signal is blocked on this
    /// thread while watched.
    pub fn add_signal(
        &self,
        signo: i32,
        handler: impl FnMut(&Handle, SignalEvent) + 'static,
    ) -> Result<SignalId> {
        if signo <= 0 || signo as usize >= NSIG || signo == libc::SIGKILL || signo == libc::SIGSTOP
        {
            return Err(Error::BadSignal(signo));
        }
        let id = self.try_with(|st| {
            let s = &mut st.signals;
            // SAFETY: `set` is initialised and signo is in range.
            if unsafe { libc::sigismember(&s.set, signo) } != 1 {
                let one = one_signal(signo);
                let mut old = empty_set();
                // SAFETY: both sets are initialised; this thread's mask only.
                unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &one, &mut old) };
                // SAFETY: `old` was filled in by pthread_sigmask.
                if unsafe { libc::sigismember(&old, signo) } != 1 {
                    s.blocked_by_us.push(signo);
                }
                // SAFETY: as above.
                unsafe { libc::sigaddset(&mut s.set, signo) };
                s.update_fd()?;
            }
            let id = s.watches.insert(SignalWatch {
                signo,
                handler: Some(Box::new(handler)),
            });
            st.arm_signal();
            Ok(id)
        })?;
        self.trace(TracePoint::Attach(EventKind::Signal));
        Ok(id)
    }

    /// Removes a signal watch. When no watch is left for its signal, the
    /// signal is unblocked again (if the loop blocked it), after pending
    /// deliveries are discarded.
    pub fn remove_signal(&self, id: SignalId) -> Result<()> {
        let watch = self.try_with(|st| {
            let w = st.signals.watches.remove(id).ok_or(Error::NotFound)?;
            let still_watched = st.signals.watches.values().any(|o| o.signo == w.signo);
            if !still_watched {
                st.stop_watching_signal(w.signo);
            }
            Ok(w)
        })?;
        drop(watch);
        self.trace(TracePoint::Detach(EventKind::Signal));
        Ok(())
    }
}

impl State {
    fn arm_signal(&mut self) {
        let Some(fd) = self.signals.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        if self.signals.armed.is_some() || self.signals.watches.is_empty() {
            return;
        }
        let op = self.ops.insert(Op::Signal);
        self.signals.armed = Some(op);
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(op.data().as_ffi());
        self.push_internal(entry);
    }

    /// Reads the signalfd now if any signal is watched (one non-blocking
    /// `read`), so deliveries are pending before the immediate phase.
    pub(super) fn check_signals(&mut self) {
        if !self.signals.watches.is_empty() {
            self.read_signals();
        }
    }

    /// Reads every queued `signalfd_siginfo` and counts deliveries.
    pub(super) fn read_signals(&mut self) {
        self.signals.read_needed = false;
        if let Some(fd) = self.signals.fd.as_ref().map(|f| f.as_raw_fd()) {
            loop {
                // SAFETY: plain data, filled in by read.
                let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
                let size = std::mem::size_of::<libc::signalfd_siginfo>();
                // SAFETY: reads at most `size` bytes into `info`.
                let n = unsafe {
                    libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size)
                };
                if n != size as isize {
                    break;
                }
                let signo = info.ssi_signo as usize;
                if signo < NSIG {
                    self.signals.counts[signo] = self.signals.counts[signo].saturating_add(1);
                    self.signals.pending = true;
                }
            }
        }
        self.arm_signal();
    }

    fn stop_watching_signal(&mut self, signo: i32) {
        let s = &mut self.signals;
        // SAFETY: `set` is initialised.
        unsafe { libc::sigdelset(&mut s.set, signo) };
        s.counts[signo as usize] = 0;
        // Discard deliveries still pending, so unblocking does not run the
        // default action (which for most signals ends the process).
        let one = one_signal(signo);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: sigtimedwait with a zero timeout consumes one pending
        // instance or fails at once.
        while unsafe { libc::sigtimedwait(&one, std::ptr::null_mut(), &zero) } == signo {}
        if let Some(pos) = s.blocked_by_us.iter().position(|&n| n == signo) {
            s.blocked_by_us.swap_remove(pos);
            // SAFETY: `one` is initialised; this thread's mask only.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut()) };
        }
        if s.watches.is_empty() {
            if let Some(op) = s.armed.take() {
                self.cancel_poll(op);
            }
            self.signals.fd = None;
        } else {
            let _ = s.update_fd();
        }
    }

    /// Stops all signal watching (loop teardown).
    pub(super) fn signals_shutdown(&mut self) {
        let signos: Vec<i32> = self.signals.watches.values().map(|w| w.signo).collect();
        self.signals.watches.clear();
        let mut seen = Vec::new();
        for signo in signos {
            if !seen.contains(&signo) {
                seen.push(signo);
                self.stop_watching_signal(signo);
            }
        }
        if let Some(op) = self.signals.armed.take() {
            self.cancel_poll(op);
        }
    }
}
