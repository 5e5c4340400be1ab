//! The io_uring instance: setup with the best flags the kernel accepts,
//! feature probing, SQE submission and the one blocking call, `io_uring_enter`.
//!
//! Nothing above this module touches the `io-uring` crate's queues directly.
//!
//! # Kernel floor and feature gating
//!
//! The floor is Linux 6.1. What the loop cannot work without is checked once,
//! in [`Ring::new`], from the setup's feature bits and the opcode probe
//! (`IORING_REGISTER_PROBE`); a gap gives [`Error::KernelTooOld`] naming the
//! kernel release and the feature:
//!
//! | required | why | since |
//! |---|---|---|
//! | `IORING_FEAT_EXT_ARG` | waits with a timeout | 5.11 |
//! | `IORING_FEAT_NODROP` | a full CQ never loses a completion | 5.5 |
//! | `IORING_FEAT_CQE_SKIP` | internal poll removes and cancels post nothing on success | 5.17 |
//! | `IORING_OP_POLL_ADD`, `POLL_REMOVE`, `ASYNC_CANCEL` | fd watches, "close means closed", cancelling operations | 5.1 / 5.5 |
//!
//! Everything else is optional, with a fallback that keeps SEMANTICS.md:
//!
//! | optional | how it is detected | fallback |
//! |---|---|---|
//! | `SETUP_SINGLE_ISSUER`, `SETUP_DEFER_TASKRUN` (6.0 / 6.1) | by trying `io_uring_setup` | a plain ring: completions are posted by task work instead of only inside `io_uring_enter`; same events, same order rules |
//! | `SETUP_TASKRUN_FLAG` (5.19), with `DEFER_TASKRUN` | by trying `io_uring_setup` | a wait may leave deferred task work the kernel bounded (20 items per pass from 6.13) for the next enter; nothing is lost, but a poll can report one wait late |
//! | `SETUP_SUBMIT_ALL` (5.18) | by trying `io_uring_setup` | SQEs behind one that fails at submission stay queued and go in with the next `io_uring_enter` (every enter passes the whole queue) |
//! | `IORING_REGISTER_RING_FDS` (5.18) | by trying the registration | `io_uring_enter` on the ring fd itself |
//!
//! Setup flags cannot be probed: the only way to learn whether the kernel
//! accepts one is to ask for it, and an unknown flag gives `EINVAL`. So setup
//! tries the best combination first and drops flags on `EINVAL` only; any
//! other error ends the attempt at once. Everything an operation or wait could
//! use is gated on the feature bits or the probe, never on an `EINVAL`.
//!
//! Deliberately unused, because 6.1 lacks them (or fails them silently):
//! `min_wait_usec` and `IORING_ENTER_ABS_TIMER` (6.12; the loop passes a
//! relative timeout computed from its own clock), `SETUP_NO_SQARRAY` and
//! `SETUP_NO_MMAP` (6.5 / 6.6), multishot timeouts (6.4), FUTEX opcodes
//! (6.7), `IORING_ASYNC_CANCEL_OP` (completes `-ENOENT` on 6.1 without
//! cancelling anything; the loop cancels by `user_data` only), MSG_RING (the
//! remote wake-up is an eventfd poll) and `IORING_POLL_ADD_LEVEL` (no kernel
//! accepts it; level triggering is done by re-arming one-shot polls).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::{IoUring, Probe, cqueue, opcode, squeue};

use crate::error::{Error, Result};
use crate::sys;

/// What this kernel's io_uring offers, as probed when the loop was built.
#[derive(Debug, Clone)]
pub struct Features {
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// `IORING_SETUP_SINGLE_ISSUER` was accepted.
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` was accepted: completions are produced only
    /// when the loop enters the kernel, never by interrupts.
    pub defer_taskrun: bool,
    /// `IORING_SETUP_SUBMIT_ALL` was accepted.
    pub submit_all: bool,
    /// `IORING_SETUP_TASKRUN_FLAG` was accepted (with `DEFER_TASKRUN`): the
    /// kernel flags deferred task work it has not run yet, and a reap runs
    /// it before the loop dispatches.
    pub taskrun_flag: bool,
    /// The ring fd is registered, saving an fd lookup per `io_uring_enter`.
    pub registered_ring: bool,
    /// `IORING_FEAT_EXT_ARG`: waits can carry a timeout (required).
    pub ext_arg: bool,
    /// `IORING_FEAT_NODROP`: a full CQ never drops completions (required).
    pub nodrop: bool,
    /// `IORING_FEAT_CQE_SKIP`: `IOSQE_CQE_SKIP_SUCCESS` is honoured (required).
    pub cqe_skip: bool,
    /// `IORING_FEAT_FAST_POLL`: operations on sockets poll internally instead
    /// of blocking a worker thread (informational).
    pub fast_poll: bool,
    /// `IORING_FEAT_MIN_TIMEOUT` (6.12+). Informational: the loop never passes
    /// `min_wait_usec`, which makes the whole wait fail with `EINVAL` on 6.1.
    pub min_timeout: bool,
    /// Submission queue size.
    pub sq_entries: u32,
    /// Completion queue size.
    pub cq_entries: u32,
    opcodes: Vec<u8>,
}

impl Features {
    /// Whether the kernel supports io_uring opcode `op` (an `io_uring::opcode::*::CODE`).
    pub fn supports_opcode(&self, op: u8) -> bool {
        self.opcodes.contains(&op)
    }

    /// The supported opcodes, by number.
    pub fn opcodes(&self) -> &[u8] {
        &self.opcodes
    }
}

/// How to build the ring; see [`crate::Builder`].
#[derive(Debug, Clone)]
pub(crate) struct RingConfig {
    pub sq_entries: u32,
    pub cq_entries: u32,
    /// The sizes are the defaults, not the user's: on `ENOMEM` (the ring
    /// charged to a small `RLIMIT_MEMLOCK`) setup halves them and retries.
    pub shrink_on_enomem: bool,
    /// Test hook: pretend the probe did not find this feature.
    pub simulate_missing: Option<&'static str>,
    /// Use plain setup flags (no SINGLE_ISSUER/DEFER_TASKRUN), as a kernel
    /// without them would.
    pub plain_setup: bool,
}

/// Opcodes the loop cannot work without.
const REQUIRED_OPCODES: [(u8, &str); 3] = [
    (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
    (opcode::PollRemove::CODE, "IORING_OP_POLL_REMOVE"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
];

/// The ring, owned by one loop on one thread.
pub(crate) struct Ring {
    ring: IoUring,
    /// The fd or registered index passed to `io_uring_enter`.
    enter_fd: RawFd,
    /// `ENTER_REGISTERED_RING` when `enter_fd` is an index.
    enter_flags: u32,
    pub features: Features,
    /// Number of `io_uring_enter` calls made.
    pub enters: u64,
    /// `io_uring_enter` calls made by [`Ring::reap`] to run deferred task
    /// work the kernel left for later.
    pub drains: u64,
}

impl Ring {
    pub fn new(cfg: &RingConfig) -> Result<Ring> {
        let (mut sq, mut cq) = (cfg.sq_entries, cfg.cq_entries.max(cfg.sq_entries));
        let (ring, single_issuer, defer_taskrun, submit_all, taskrun_flag) = loop {
            match setup(sq, cq, cfg.plain_setup) {
                Ok(built) => break built,
                // Unprivileged users are charged the ring's memory against
                // RLIMIT_MEMLOCK (measured on 6.18: the default sizes need
                // about 96 KiB; 64 KiB limits are common in containers).
                // Smaller rings lose nothing: a full CQ only costs extra
                // enters.
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOMEM)
                        && cfg.shrink_on_enomem
                        && cq > MIN_SHRUNK_CQ =>
                {
                    cq /= 2;
                    sq = sq.min(cq);
                }
                Err(e) => return Err(unavailable(e)),
            }
        };
        let mut probe = Probe::new();
        let mut opcodes = Vec::new();
        if ring.submitter().register_probe(&mut probe).is_ok() {
            opcodes = (0..=u8::MAX).filter(|&op| probe.is_supported(op)).collect();
        }
        let params = ring.params();
        let mut features = Features {
            kernel: sys::kernel_release(),
            single_issuer,
            defer_taskrun,
            submit_all,
            taskrun_flag,
            registered_ring: false,
            ext_arg: params.is_feature_ext_arg(),
            nodrop: params.is_feature_nodrop(),
            cqe_skip: params.is_feature_skip_cqe_on_success(),
            fast_poll: params.is_feature_fast_poll(),
            min_timeout: params.is_feature_min_timeout(),
            sq_entries: params.sq_entries(),
            cq_entries: params.cq_entries(),
            opcodes,
        };
        if let Some(missing) = cfg.simulate_missing {
            match missing {
                "IORING_FEAT_EXT_ARG" => features.ext_arg = false,
                "IORING_FEAT_NODROP" => features.nodrop = false,
                "IORING_FEAT_CQE_SKIP" => features.cqe_skip = false,
                other => {
                    if let Some(&(code, _)) = REQUIRED_OPCODES.iter().find(|(_, n)| *n == other) {
                        features.opcodes.retain(|&op| op != code);
                    }
                }
            }
        }
        check_required(&features)?;

        let raw = ring.as_raw_fd();
        let (enter_fd, enter_flags) = match sys::register_ring_fd(raw) {
            Ok(index) => {
                features.registered_ring = true;
                (index, sys::ENTER_REGISTERED_RING)
            }
            Err(_) => (raw, 0),
        };
        Ok(Ring {
            ring,
            enter_fd,
            enter_flags,
            features,
            enters: 0,
            drains: 0,
        })
    }

    /// Registers a ring of provided buffers as buffer group `group`.
    ///
    /// # Safety
    /// `ring_addr` must point at `entries` page-aligned `io_uring_buf`
    /// entries that stay valid until the ring is closed, and so must every
    /// buffer they name while it is in the ring.
    pub unsafe fn register_buf_ring(
        &self,
        ring_addr: u64,
        entries: u16,
        group: u16,
    ) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(ring_addr, entries, group, 0)
        }
    }

    /// Queues one SQE, submitting what is queued first if the SQ is full.
    ///
    /// # Safety
    /// Whatever memory `entry` points to must stay valid until its completion.
    ///
    /// `#[inline]`, with the full queue out of line: every re-arm of a
    /// level-triggered watch comes here, and as a call of its own the
    /// common case (room in the SQ) cost about 40 instructions per event,
    /// half of them the call's own.
    #[inline]
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.push_when_full(entry) }
    }

    /// [`Ring::push`] once the SQ is full: submit what is queued, then retry.
    ///
    /// # Safety
    /// As for [`Ring::push`].
    #[cold]
    #[inline(never)]
    unsafe fn push_when_full(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // GETEVENTS too: on kernels that refuse submission while the CQ
            // overflow list is non-empty (EBUSY), this flushes it.
            self.enter(0, sys::ENTER_GETEVENTS, None)?;
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
        }
    }

    /// SQEs queued but not yet handed to the kernel.
    pub fn pending(&mut self) -> u32 {
        self.ring.submission().len() as u32
    }

    /// Submits what is queued and, with `GETEVENTS`, runs deferred completion
    /// work; waits for `min_complete` completions up to `timeout` (`None` = no limit).
    ///
    /// `EINTR`, `ETIME` and `EBUSY` are not errors here: the caller reads the
    /// clock and the CQ afterwards to learn what happened.
    pub fn enter(
        &mut self,
        min_complete: u32,
        flags: u32,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let to_submit = self.pending();
        let ts = timeout.map(sys::KernelTimespec::from_duration);
        self.enters += 1;
        match sys::io_uring_enter(
            self.enter_fd,
            to_submit,
            min_complete,
            flags | self.enter_flags,
            ts.as_ref(),
        ) {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Submits and reaps without blocking: runs deferred task work so that
    /// cancellations take effect and ready completions become visible.
    pub fn flush(&mut self) -> io::Result<()> {
        self.enter(0, sys::ENTER_GETEVENTS, None)
    }

    /// [`Ring::flush`], but without the syscall when it would do nothing:
    /// no SQE is queued, the CQ has not overflowed, and the kernel holds no
    /// deferred task work for this ring (`IORING_SQ_TASKRUN` is clear). On
    /// a `DEFER_TASKRUN` ring every completion not yet in the CQ waits as
    /// such work, and the kernel sets the flag when it queues the first
    /// item. A busy executor takes a non-blocking turn of the loop between
    /// polls; with nothing in the kernel for it, the turn stays in user
    /// space. A ring without `SETUP_TASKRUN_FLAG` keeps no such flag, so
    /// there this always enters. ([`Ring::reap`] also enters for task work
    /// and overflow; checking here keeps this call's promise on its own.)
    pub fn flush_unless_idle(&mut self) -> io::Result<()> {
        if self.kernel_has_work() == Some(false) {
            return Ok(());
        }
        self.flush()
    }

    /// The kernel's part of a loop iteration that does not wait: submits
    /// what is queued and runs deferred task work, but only if there is
    /// any. Unlike [`Ring::flush_unless_idle`] this makes no syscall on a
    /// ring without `DEFER_TASKRUN` whose SQ is empty: there the kernel
    /// posts completions by itself, and [`Ring::reap`] sees them.
    pub fn submit_unless_idle(&mut self) -> io::Result<()> {
        // Without the flag, only a `DEFER_TASKRUN` ring may hold work that
        // nothing but an enter runs.
        if !self
            .kernel_has_work()
            .unwrap_or(self.features.defer_taskrun)
        {
            return Ok(());
        }
        self.flush()
    }

    /// Whether an enter now would do anything: an SQE is queued, the CQ
    /// overflowed, or the kernel flags deferred task work. `None` when none
    /// of the first two holds on a ring that keeps no such flag (no
    /// `SETUP_TASKRUN_FLAG`): then it cannot tell.
    fn kernel_has_work(&mut self) -> Option<bool> {
        if self.pending() > 0 {
            return Some(true);
        }
        let sq = self.ring.submission();
        if sq.cq_overflow() {
            return Some(true);
        }
        self.features.taskrun_flag.then(|| sq.taskrun())
    }

    /// Blocks until at least one completion or the timeout.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.enter(1, sys::ENTER_GETEVENTS, timeout)
    }

    /// Moves every visible CQE into `out`, flushing the kernel's overflow list
    /// until it is empty: a full CQ loses nothing. Returns how many overflow
    /// flushes were needed.
    ///
    /// With `DEFER_TASKRUN` the kernel runs at most 20 deferred task-work
    /// items per pass (two passes per `io_uring_enter`, Linux 6.13 and
    /// later) and keeps the rest for the next call; it then sets
    /// `IORING_SQ_TASKRUN` (we ask for `SETUP_TASKRUN_FLAG`). While that flag
    /// is set this enters again without blocking and reaps, so one wait sees
    /// every completion the kernel had ready, as a wait on a plain ring does.
    /// Otherwise a poll armed in a long batch of submissions (many watches
    /// added, or cancels and re-arms) would report one wait late, after a
    /// re-armed watch that completed inline had already run twice
    /// (SEMANTICS.md §1.7; found by the `ops_vs_model` fuzz target).
    pub fn reap(&mut self, out: &mut Vec<cqueue::Entry>) -> io::Result<u64> {
        let mut pass = ReapPasses::default();
        while self.reap_visible(out, &mut pass) {
            self.flush()?;
        }
        Ok(pass.overflow_flushes)
    }

    /// One pass of [`Ring::reap`], for a caller that looks at each batch
    /// before the next: moves the visible CQEs into `out` and says whether
    /// the kernel holds more (an overflow list, or deferred task work while
    /// `pass` is under the drain bound), which [`Ring::flush`] fetches.
    /// What the caller queues in between (a multishot receive's cancel at
    /// its limit) goes in with that enter, not after the kernel has posted
    /// up to 64 more batches.
    #[inline]
    pub fn reap_visible(&mut self, out: &mut Vec<cqueue::Entry>, pass: &mut ReapPasses) -> bool {
        out.extend(self.ring.completion());
        let (overflow, taskrun) = {
            let sq = self.ring.submission();
            (sq.cq_overflow(), sq.taskrun())
        };
        if overflow {
            pass.overflow_flushes += 1;
        } else if self.features.taskrun_flag && taskrun && pass.drains < MAX_DRAINS {
            pass.drains += 1;
            self.drains += 1;
        } else {
            return false;
        }
        true
    }
}

/// What the passes of one reap have counted so far.
#[derive(Debug, Default)]
pub struct ReapPasses {
    /// Overflow-list flushes.
    pub overflow_flushes: u64,
    drains: u32,
}

/// The smallest CQ that [`Ring::new`] shrinks the default sizes to.
const MIN_SHRUNK_CQ: u32 = 64;

/// Sets up a ring of `sq` and `cq` entries with the best setup flags the
/// kernel accepts: (ring, single_issuer, defer_taskrun, submit_all,
/// taskrun_flag). Setup flags cannot be probed any other way than by asking
/// for them, so an `EINVAL` moves on to the next combination and any other
/// error ends the attempt.
fn setup(sq: u32, cq: u32, plain: bool) -> io::Result<(IoUring, bool, bool, bool, bool)> {
    let attempts: &[(bool, bool, bool, bool)] = if plain {
        &[(false, false, false, false)]
    } else {
        // (single_issuer, defer_taskrun, submit_all, taskrun_flag), best first.
        &[
            (true, true, true, true),
            (true, true, true, false),
            (true, false, true, false),
            (false, false, true, false),
            (false, false, false, false),
        ]
    };
    let mut last_err = None;
    for &(single, defer, all, taskrun_flag) in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_clamp();
        if single {
            b.setup_single_issuer();
        }
        if defer {
            b.setup_defer_taskrun();
        }
        if all {
            b.setup_submit_all();
        }
        if taskrun_flag {
            b.setup_taskrun_flag();
        }
        match b.build(sq) {
            Ok(ring) => return Ok((ring, single, defer, all, taskrun_flag)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("setup failed")))
}

/// A bound on drain enters per reap, so that completions arriving without
/// end (from other threads, say) cannot keep the loop from dispatching.
const MAX_DRAINS: u32 = 64;

fn check_required(f: &Features) -> Result<()> {
    let missing = if !f.ext_arg {
        Some("IORING_FEAT_EXT_ARG (timed waits, Linux 5.11)")
    } else if !f.nodrop {
        Some("IORING_FEAT_NODROP (no lost completions, Linux 5.5)")
    } else if !f.cqe_skip {
        Some("IORING_FEAT_CQE_SKIP (IOSQE_CQE_SKIP_SUCCESS, Linux 5.17)")
    } else {
        REQUIRED_OPCODES
            .iter()
            .find(|(code, _)| !f.supports_opcode(*code))
            .map(|(_, name)| *name)
    };
    match missing {
        Some(missing) => Err(Error::KernelTooOld {
            release: f.kernel.clone(),
            missing,
        }),
        None => Ok(()),
    }
}

/// Explains a failed `io_uring_setup` in terms a person can act on.
fn unavailable(e: io::Error) -> Error {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            "the kernel has no io_uring, or a seccomp filter (Docker's default profile) \
             blocks io_uring_setup; run on Linux 6.1+ and allow io_uring_setup, \
             io_uring_enter and io_uring_register in the container's seccomp profile"
        }
        Some(libc::EPERM) if disabled > 0 => {
            "io_uring is disabled by the sysctl kernel.io_uring_disabled; \
             set it to 0 (or 1 and add this user to kernel.io_uring_group)"
        }
        Some(libc::EPERM) => {
            "the call was refused, most likely by a seccomp filter (Docker's default \
             profile blocks io_uring); allow io_uring_setup, io_uring_enter and \
             io_uring_register"
        }
        Some(libc::ENOMEM) => {
            "not enough locked memory for the ring (RLIMIT_MEMLOCK, which the kernel \
             charges for the ring's memory unless the user has CAP_IPC_LOCK); raise \
             `ulimit -l` or build the loop with fewer entries"
        }
        Some(libc::EMFILE | libc::ENFILE) => {
            "out of file descriptors; close some or raise `ulimit -n`"
        }
        Some(libc::EINVAL) => {
            "the kernel rejected every ring configuration; run on Linux 6.1 or newer"
        }
        _ => "io_uring_setup failed; check that the kernel supports io_uring",
    };
    Error::Unavailable { source: e, hint }
}
