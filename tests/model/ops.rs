//! Drives a real loop and the model with the same operations and checks them
//! against each other after every step (the proptest suite and the
//! `ops_vs_model` fuzz target both call [`check_ops`]).
//!
//! Operations are decoded from bytes so that proptest, the fuzzer and the
//! corpus replay share one format; a short input is a short case.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use ringloop::{
    Builder, Error, EventLoop, FdEvent, FdId, Handle, ImmediateId, Interest, ManualClock, TimerId,
    TracePoint, WaitTimeout,
};

use super::sem::{self, Model};
use super::{Src, open_fds};

const MAX_PAIRS: usize = 3;
const MAX_WATCHES: usize = 10;
const MAX_TIMERS: usize = 12;
const MAX_IMMEDIATES: usize = 12;
const MS: u64 = 1_000_000;
/// Longer inputs are cut (see the SQ size in [`check_ops`]).
const MAX_INPUT: usize = 2048;

/// Operation codes by weight: adding watches, peer activity and running
/// iterations come up most.
const WEIGHTS: [u8; 40] = [
    0, 1, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
    23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23,
];

/// What a handler does each time it runs.
#[derive(Debug, Clone, Copy)]
enum Action {
    Nop,
    RemoveWatch(u8),
    SetInterest(u8, u8),
    AddImmediate,
    /// `Remote::schedule` from the loop's own thread.
    AddRemote,
    CancelImmediate(u8),
    RescheduleImmediate(u8),
    AddTimer(u8),
    CancelTimer(u8),
    UpdateTimer(u8, u8),
    /// Fd handlers: read the fd until it would block.
    ReadOwn,
}

fn action(src: &mut Src) -> Action {
    let (a, b, c) = (src.u8(), src.u8(), src.u8());
    match a % 12 {
        0..=2 => Action::Nop,
        3 => Action::RemoveWatch(b),
        4 => Action::SetInterest(b, c),
        // A rare variant of 5, so that older corpus inputs keep their meaning.
        5 if b >= 224 => Action::AddRemote,
        5 => Action::AddImmediate,
        6 => Action::CancelImmediate(b),
        7 => Action::RescheduleImmediate(b),
        8 => Action::AddTimer(b),
        9 => Action::CancelTimer(b),
        10 => Action::UpdateTimer(b, c),
        _ => Action::ReadOwn,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// AF_UNIX stream pair; our end is a socket.
    Unix,
    /// Pipe; the loop watches the read end.
    PipeRead,
    /// Pipe; the loop watches the write end.
    PipeWrite,
}

struct Pair {
    kind: Kind,
    /// The harness's own fd of the watched file (raw watches use it).
    base: Option<OwnedFd>,
    peer: Option<OwnedFd>,
    /// Fds handed back by `take_fd`, kept open until the end.
    held: Vec<OwnedFd>,
    /// Own writes not read by the peer (bounded so the fd stays writable).
    unread: u32,
}

struct Shared {
    model: Model,
    pairs: Vec<Pair>,
    watch_ids: Vec<FdId>,
    watch_fds: Vec<RawFd>,
    watch_actions: Vec<Action>,
    timer_ids: Vec<TimerId>,
    timer_actions: Vec<Action>,
    /// Local immediates: the model's index and the loop's id.
    imm_ids: Vec<(usize, ImmediateId)>,
    /// By the model's index, remote immediates included.
    imm_actions: Vec<Action>,
    /// `io_uring_enter` calls the model has accounted for (each one is a
    /// readiness sample); compared with the loop's `stats().enters` less its drains.
    enters_seen: u64,
    /// Set when the loop starts to wait: whether the model had work for the
    /// kernel then ([`Model::needs_enter`]). A wait with none may skip its
    /// enter; one with some must not.
    wait_needed: Option<bool>,
    /// Checks are off during teardown.
    checking: bool,
    log: Vec<String>,
}

type Rs = Rc<RefCell<Shared>>;

thread_local! {
    /// The case being checked, for remote closures: they must be `Send`, so
    /// they carry only an index and find the harness here (they run on
    /// this thread, the loop's).
    static HARNESS: RefCell<Option<Rs>> = const { RefCell::new(None) };
}

fn fail(s: &Shared, msg: String) -> ! {
    panic!("{msg}\nops:\n  {}", s.log.join("\n  "));
}

fn check(s: &Shared, r: Result<(), String>) {
    if let Err(m) = r {
        fail(s, m)
    }
}

/// The loop's `io_uring_enter` calls that sample readiness. A drain (an
/// extra enter after a full batch of deferred completions, see
/// `Stats::drains`) belongs to the enter before it: no handler runs in
/// between, so it sees the same files, and the completions it brings are
/// the ones the model expects from that enter.
fn samples(s: ringloop::Stats) -> u64 {
    s.enters - s.drains
}

/// `poll(2)` with a zero timeout: what the kernel says about `fd` now.
pub fn readiness(fd: RawFd) -> u32 {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP | libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n < 0 { 0 } else { p.revents as u16 as u32 }
}

impl Shared {
    /// An open fd of pair `p`'s watched file, if any.
    fn any_fd(&self, p: usize) -> Option<RawFd> {
        let pair = &self.pairs[p];
        if let Some(b) = &pair.base {
            return Some(b.as_raw_fd());
        }
        if let Some(h) = pair.held.first() {
            return Some(h.as_raw_fd());
        }
        (0..self.model.watches.len())
            .find(|&w| self.model.alive(w) && self.model.watches[w].file == p)
            .map(|w| self.watch_fds[w])
    }

    fn file_open(&self, p: usize) -> bool {
        let pair = &self.pairs[p];
        pair.base.is_some() || !pair.held.is_empty() || self.model.file_has_owner(p)
    }

    fn flush_model(&mut self) {
        let ready: Vec<u32> = (0..self.pairs.len())
            .map(|p| self.any_fd(p).map_or(0, readiness))
            .collect();
        self.model.flush(&|f| ready[f]);
    }

    /// §3: the peer sees EOF exactly when no fd of our end is open.
    fn check_eof(&self) {
        for (p, pair) in self.pairs.iter().enumerate() {
            let Some(peer) = &pair.peer else { continue };
            let rev = readiness(peer.as_raw_fd());
            let eof_bits = match pair.kind {
                Kind::Unix => sem::RDHUP | sem::HUP,
                Kind::PipeRead => sem::ERR,
                Kind::PipeWrite => sem::HUP,
            };
            let sees_eof = rev & eof_bits != 0;
            if sees_eof == self.file_open(p) {
                fail(
                    self,
                    format!(
                        "pair {p} ({:?}): peer sees EOF = {sees_eof} (revents {rev:#x}) but our end open = {}",
                        pair.kind,
                        self.file_open(p)
                    ),
                );
            }
        }
    }
}

/// The interest an input byte asks for: its low three bits are the
/// conditions, and one byte in four (bits 3 and 4 both set) adds the EDGE
/// mode, so that level-triggered watches, the default, stay the majority.
fn interest(bits: u8) -> Interest {
    let conditions = Interest::from_bits_truncate(bits);
    if bits & 0x18 == 0x18 {
        conditions | Interest::EDGE
    } else {
        conditions
    }
}

/// The same interest as the model writes it (`Interest::bits()`).
fn model_bits(bits: u8) -> u8 {
    interest(bits).bits()
}

fn new_pair(kind: Kind) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds both calls return.
    let rc = unsafe {
        match kind {
            Kind::Unix => libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            ),
            _ => libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC),
        }
    };
    assert_eq!(
        rc,
        0,
        "socketpair/pipe2: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: both fds were just created and belong to nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    match kind {
        Kind::PipeWrite => (b, a),
        _ => (a, b),
    }
}

fn dup(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` is open; the dup is owned by the caller.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    assert!(d >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: just created.
    unsafe { OwnedFd::from_raw_fd(d) }
}

/// Writes up to 64 bytes; whether anything was written.
fn write_some(fd: RawFd, n: usize) -> bool {
    let buf = [0x5au8; 64];
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    // SAFETY: reads `n <= 64` bytes from a live buffer. MSG_NOSIGNAL for
    // sockets; pipes are only written while their reader is open.
    unsafe {
        let mut r = libc::send(fd, buf.as_ptr().cast(), n, flags);
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTSOCK) {
            r = libc::write(fd, buf.as_ptr().cast(), n);
        }
        r > 0
    }
}

fn drain(fd: RawFd) {
    let mut buf = [0u8; 4096];
    // SAFETY: reads into a live buffer of the given size; the fd is non-blocking.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Runs the handler of watch `w`.
fn on_fd(s: &Rs, h: &Handle, w: usize, ev: FdEvent) {
    let act = {
        let mut g = s.borrow_mut();
        if g.checking {
            if ev.id != g.watch_ids[w] || ev.fd != g.watch_fds[w] {
                fail(&g, format!("watch {w} handler got the event of {:?}", ev));
            }
            g.log.push(format!("    fd {w} ran with {:?}", ev.ready));
            let r = g.model.on_fd(w, ev.ready.bits());
            check(&g, r);
        }
        g.watch_actions[w]
    };
    perform(s, h, act, Some(ev.fd));
    let mut g = s.borrow_mut();
    if g.checking {
        g.model.fd_done(w);
    }
}

fn on_timer(s: &Rs, h: &Handle, t: usize) {
    let act = {
        let mut g = s.borrow_mut();
        g.log.push(format!("    timer {t} ran"));
        if g.checking {
            let r = g.model.on_timer(t);
            check(&g, r);
        }
        g.timer_actions[t]
    };
    perform(s, h, act, None);
}

fn on_immediate(s: &Rs, h: &Handle, i: usize) {
    let act = {
        let mut g = s.borrow_mut();
        g.log.push(format!("    immediate {i} ran"));
        if g.checking {
            let r = g.model.on_immediate(i);
            check(&g, r);
        }
        g.imm_actions[i]
    };
    perform(s, h, act, None);
}

fn on_remote(h: &Handle, i: usize) {
    let Some(s) = HARNESS.with(|x| x.borrow().clone()) else {
        return;
    };
    let act = {
        let mut g = s.borrow_mut();
        if !g.checking {
            // Teardown's iterations may run what is still queued.
            return;
        }
        g.log.push(format!("    remote immediate {i} ran"));
        let r = g.model.on_immediate(i);
        check(&g, r);
        g.imm_actions[i]
    };
    perform(&s, h, act, None);
}

fn expect_found(s: &Rs, what: &str, r: ringloop::Result<()>, found: bool) {
    let g = s.borrow();
    match (r, found) {
        (Ok(()), true) | (Err(Error::NotFound), false) => {}
        // Not checking (a plain ring): the model does not follow which
        // timers and immediates ran, so either answer may be right.
        (Ok(()) | Err(Error::NotFound), _) if !g.checking => {}
        (r, _) => fail(&g, format!("{what}: got {r:?}, model says found = {found}")),
    }
}

/// Adds a watch (from outside or from a handler).
fn add_watch(s: &Rs, h: &Handle, p: usize, owned: bool, bits: u8, act: Action) {
    let (w, fd) = {
        let g = s.borrow();
        if g.watch_ids.len() >= MAX_WATCHES || p >= g.pairs.len() {
            return;
        }
        let Some(base) = &g.pairs[p].base else { return };
        (g.watch_ids.len(), base.as_raw_fd())
    };
    let s2 = s.clone();
    let handler = move |h: &Handle, ev: FdEvent| on_fd(&s2, h, w, ev);
    let (id, raw) = if owned {
        let d = dup(fd);
        let raw = d.as_raw_fd();
        (h.add_fd(d, interest(bits), handler), raw)
    } else {
        // SAFETY: the harness keeps `base` open while a raw watch uses it
        // (CloseBase is refused then).
        (unsafe { h.add_raw_fd(fd, interest(bits), handler) }, fd)
    };
    let mut g = s.borrow_mut();
    let id = id.unwrap_or_else(|e| fail(&g, format!("add_fd: {e}")));
    g.watch_ids.push(id);
    g.watch_fds.push(raw);
    g.watch_actions.push(act);
    let mw = g.model.add_watch(p, owned, model_bits(bits));
    assert_eq!(mw, w);
}

fn remove_watch(s: &Rs, h: &Handle, k: u8, take: bool) {
    let (w, id, alive, owned) = {
        let mut g = s.borrow_mut();
        if g.watch_ids.is_empty() {
            return;
        }
        let w = k as usize % g.watch_ids.len();
        let alive = g.model.alive(w);
        let owned = alive && g.model.watches[w].owned;
        // Removal enters the kernel (a readiness sample for every other
        // poll) when the watch owns its fd, so that the close reaches the
        // peer, or when it has a poll armed, so that a caller closing a raw
        // fd next finds no poll holding the file.
        let enters = if !alive {
            Some(false)
        } else if owned {
            Some(true)
        } else {
            g.model.armed(w)
        };
        if g.checking && (enters.is_none() || (enters == Some(true) && !g.model.may_flush())) {
            g.log
                .push(format!("    (skip removing {w}: outcome not predictable)"));
            return;
        }
        if owned && g.checking {
            // The loop cancels the watch's own poll, enters the kernel, then
            // closes: sample before the close.
            g.model.remove_watch(w);
            g.flush_model();
        }
        g.log.push(format!("    remove watch {w} (take={take})"));
        (w, g.watch_ids[w], alive, owned)
    };
    let enters_before = h.stats().map_or(0, samples);
    let r = if take {
        h.take_fd(id).map(|fd| {
            let mut g = s.borrow_mut();
            match (fd, owned) {
                (Some(fd), true) => {
                    assert_eq!(fd.as_raw_fd(), g.watch_fds[w]);
                    let p = g.model.watches[w].file;
                    g.pairs[p].held.push(fd);
                }
                (None, false) => {}
                (fd, _) => fail(&g, format!("take_fd({w}) gave {fd:?}, owned = {owned}")),
            }
        })
    } else {
        h.remove_fd(id)
    };
    expect_found(s, "remove_fd", r, alive);
    let entered = h.stats().map_or(0, samples) - enters_before;
    let mut g = s.borrow_mut();
    g.model.remove_watch(w);
    if g.checking {
        if entered > 0 && !owned {
            // No fd was closed: the files are as they were at the enter.
            g.flush_model();
        }
        g.enters_seen += entered;
        g.check_eof();
    }
}

fn set_interest(s: &Rs, h: &Handle, k: u8, bits: u8) {
    let (w, id, alive) = {
        let mut g = s.borrow_mut();
        if g.watch_ids.is_empty() {
            return;
        }
        let w = k as usize % g.watch_ids.len();
        if !g.model.may_change_interest(w) {
            g.log.push(format!(
                "    (skip interest of {w}: outcome not predictable)"
            ));
            return;
        }
        g.log
            .push(format!("    set interest {w} {:?}", interest(bits)));
        (w, g.watch_ids[w], g.model.alive(w))
    };
    let r = h.set_interest(id, interest(bits));
    expect_found(s, "set_interest", r, alive);
    let mut g = s.borrow_mut();
    if alive {
        g.model.set_interest(w, model_bits(bits));
        let want = g.model.watches[w].interest;
        drop(g);
        let got = h.interest(id).map(|i| i.bits());
        if got.as_ref().ok() != Some(&want) {
            fail(
                &s.borrow(),
                format!("interest({w}) = {got:?}, model {want}"),
            );
        }
    }
}

fn add_timer(s: &Rs, h: &Handle, after_ms: Option<u8>, act: Action) {
    let t = {
        let g = s.borrow();
        if g.timer_ids.len() >= MAX_TIMERS {
            return;
        }
        g.timer_ids.len()
    };
    let s2 = s.clone();
    let handler = move |h: &Handle| on_timer(&s2, h, t);
    let id = match after_ms {
        Some(ms) => h.add_timer(Duration::from_millis(u64::from(ms % 16)), handler),
        None => h.add_timer_asap(handler),
    };
    let mut g = s.borrow_mut();
    let id = id.unwrap_or_else(|e| fail(&g, format!("add_timer: {e}")));
    g.log.push(format!("    add timer {t} after {after_ms:?}"));
    g.timer_ids.push(id);
    g.timer_actions.push(act);
    let mt = g
        .model
        .add_timer(after_ms.map(|ms| u64::from(ms % 16) * MS));
    assert_eq!(mt, t);
}

/// The model's index for the next immediate, local or remote; `None` at the cap.
fn next_immediate(s: &Rs) -> Option<usize> {
    let n = s.borrow().imm_actions.len();
    (n < MAX_IMMEDIATES).then_some(n)
}

fn add_immediate(s: &Rs, h: &Handle, act: Action) {
    let Some(i) = next_immediate(s) else {
        return;
    };
    let s2 = s.clone();
    let id = h.add_immediate(move |h| on_immediate(&s2, h, i));
    let mut g = s.borrow_mut();
    let id = id.unwrap_or_else(|e| fail(&g, format!("add_immediate: {e}")));
    g.log.push(format!("    add immediate {i}"));
    g.imm_ids.push((i, id));
    g.imm_actions.push(act);
    assert_eq!(g.model.add_immediate(), i);
}

fn add_remote(s: &Rs, h: &Handle, act: Action) {
    let Some(i) = next_immediate(s) else {
        return;
    };
    let r = h
        .remote()
        .and_then(|remote| remote.schedule(move |h| on_remote(h, i)));
    let mut g = s.borrow_mut();
    if let Err(e) = r {
        fail(&g, format!("remote schedule: {e}"));
    }
    g.log.push(format!("    add remote immediate {i}"));
    g.imm_actions.push(act);
    assert_eq!(g.model.add_remote(), i);
}

fn pick<T: Copy>(v: &[T], k: u8) -> Option<(usize, T)> {
    if v.is_empty() {
        None
    } else {
        let i = k as usize % v.len();
        Some((i, v[i]))
    }
}

fn perform(s: &Rs, h: &Handle, act: Action, own_fd: Option<RawFd>) {
    match act {
        Action::Nop => {}
        Action::RemoveWatch(k) => remove_watch(s, h, k, false),
        Action::SetInterest(k, bits) => set_interest(s, h, k, bits),
        Action::AddImmediate => add_immediate(s, h, Action::Nop),
        Action::AddRemote => add_remote(s, h, Action::Nop),
        Action::CancelImmediate(k) => {
            let Some((_, (i, id))) = pick(&s.borrow().imm_ids, k) else {
                return;
            };
            let r = h.cancel_immediate(id);
            let found = s.borrow_mut().model.cancel_immediate(i);
            expect_found(s, "cancel_immediate", r, found);
        }
        Action::RescheduleImmediate(k) => {
            let Some((_, (i, id))) = pick(&s.borrow().imm_ids, k) else {
                return;
            };
            let r = h.reschedule_immediate(id);
            let found = s.borrow_mut().model.reschedule_immediate(i);
            expect_found(s, "reschedule_immediate", r, found);
        }
        Action::AddTimer(ms) => add_timer(s, h, Some(ms), Action::Nop),
        Action::CancelTimer(k) => {
            let Some((t, id)) = pick(&s.borrow().timer_ids, k) else {
                return;
            };
            let r = h.cancel_timer(id);
            let found = s.borrow_mut().model.cancel_timer(t);
            expect_found(s, "cancel_timer", r, found);
        }
        Action::UpdateTimer(k, ms) => {
            let Some((t, id)) = pick(&s.borrow().timer_ids, k) else {
                return;
            };
            let after = u64::from(ms % 16);
            let r = h.update_timer(id, Duration::from_millis(after));
            let found = s.borrow_mut().model.update_timer(t, after * MS);
            expect_found(s, "update_timer", r, found);
        }
        Action::ReadOwn => {
            if let Some(fd) = own_fd {
                drain(fd);
            }
        }
    }
}

fn run_once(s: &Rs, lp: &EventLoop) {
    if !s.borrow().checking {
        // A plain ring: the handlers run, and close means closed is
        // checked, but which handler runs when is not predicted.
        s.borrow_mut().log.push("  run_once (not checked)".into());
        match lp.run_once() {
            Ok(()) | Err(Error::WouldBlock) => {}
            Err(e) => fail(&s.borrow(), format!("run_once: {e}")),
        }
        s.borrow().check_eof();
        return;
    }
    {
        let mut g = s.borrow_mut();
        g.log.push("  run_once".into());
        let r = g.model.iteration_start();
        check(&g, r);
    }
    let (loop_before, seen_before) = {
        let g = s.borrow();
        (samples(lp.stats().unwrap()), g.enters_seen)
    };
    let r = lp.run_once();
    let mut g = s.borrow_mut();
    // The enters of this iteration that handlers did not account for
    // (removals do, as they go) are its wait's: one, or none if the wait
    // had nothing for the kernel.
    let loop_delta = samples(lp.stats().unwrap()) - loop_before;
    let waited = loop_delta.checked_sub(g.enters_seen - seen_before);
    match (g.wait_needed.take(), waited) {
        // Not checking (a plain ring): the model takes no part in waits.
        _ if !g.checking => {}
        (None, Some(0)) => {}
        (Some(_), Some(1)) => g.enters_seen += 1,
        (Some(false), Some(0)) => g.log.push("      (idle: no enter)".into()),
        (needed, waited) => fail(
            &g,
            format!(
                "an iteration's wait entered the kernel {waited:?} times \
                 (the model had work for it: {needed:?})"
            ),
        ),
    }
    let would_block = match r {
        Ok(()) => false,
        Err(Error::WouldBlock) => true,
        Err(e) => fail(&g, format!("run_once: {e}")),
    };
    let r = g.model.iteration_end(would_block);
    check(&g, r);
    g.check_eof();
    if would_block {
        // The ready queue is drained: every interest is known, also those a
        // WRITE-only watch lost to a hang-up (§2: reads back as empty).
        let watches: Vec<(usize, FdId, u8)> = (0..g.watch_ids.len())
            .filter(|&w| g.model.alive(w))
            .map(|w| (w, g.watch_ids[w], g.model.watches[w].interest))
            .collect();
        drop(g);
        for (w, id, want) in watches {
            let got = lp.interest(id).map(|i| i.bits());
            if got.as_ref().ok() != Some(&want) {
                fail(
                    &s.borrow(),
                    format!("interest({w}) = {got:?}, model {want}"),
                );
            }
        }
    }
}

fn trace(s: &Rs, p: TracePoint) {
    match p {
        TracePoint::BeforeWait => {
            let mut g = s.borrow_mut();
            if !g.checking {
                return;
            }
            g.log.push("    wait".into());
            // With WaitTimeout::Never the wait is one enter with GETEVENTS,
            // or none if the kernel has nothing (counted by `run_once`).
            g.wait_needed = Some(g.model.needs_enter());
            let ready: Vec<u32> = (0..g.pairs.len())
                .map(|p| g.any_fd(p).map_or(0, readiness))
                .collect();
            let r = g.model.before_wait(&|f| ready[f]);
            check(&g, r);
        }
        TracePoint::AfterWait => {
            let mut g = s.borrow_mut();
            if g.checking {
                let r = g.model.after_wait();
                check(&g, r);
            }
        }
        _ => {}
    }
}

/// Decodes `data` into operations and runs them against the loop and the
/// model; panics with the operation log on the first difference. Checks at
/// the end that no fd leaked and nothing is left in flight.
pub fn check_ops(data: &[u8]) {
    // SAFETY: ignoring SIGPIPE is process-wide and harmless here.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let fds_before = open_fds();
    let clock = ManualClock::new();
    // Deadlines are "now + delay"; start away from zero so a zero delay is
    // due at once, as it is on the real clock.
    clock.advance(Duration::from_millis(1));
    // Enough SQ entries that the loop never has to enter the kernel to make
    // room between two waits (that would be a readiness sample the model
    // does not expect): inputs are cut at MAX_INPUT bytes.
    let data = &data[..data.len().min(MAX_INPUT)];
    let lp = Builder::default()
        .sq_entries(4096)
        .cq_entries(8192)
        .wait_timeout(WaitTimeout::Never)
        .manual_clock(clock.clone())
        .build()
        .expect("build loop");
    // The model says when polls sample readiness: at an io_uring_enter
    // with GETEVENTS. Without DEFER_TASKRUN the kernel may also complete
    // them at other times, so the fd phase has nothing exact to check: the
    // operations still run, and what does not depend on that timing is
    // still checked (timers and immediates in order, close means closed
    // after every removal, nothing left in flight, no fd leaked).
    let exact = lp.features().unwrap().defer_taskrun;
    let baseline = lp.stats().unwrap().in_flight;
    let s: Rs = Rc::new(RefCell::new(Shared {
        model: Model {
            now: MS,
            ..Model::default()
        },
        pairs: Vec::new(),
        watch_ids: Vec::new(),
        watch_fds: Vec::new(),
        watch_actions: Vec::new(),
        timer_ids: Vec::new(),
        timer_actions: Vec::new(),
        imm_ids: Vec::new(),
        imm_actions: Vec::new(),
        enters_seen: samples(lp.stats().unwrap()),
        wait_needed: None,
        checking: exact,
        log: Vec::new(),
    }));
    let s2 = s.clone();
    lp.set_trace_hook(Some(Box::new(move |p| trace(&s2, p))));
    HARNESS.with(|x| *x.borrow_mut() = Some(s.clone()));

    let mut src = Src::new(data);
    let first = src.u8();
    let mut ops_bytes = vec![0, 0, first, 0, 0, first / 3];
    ops_bytes.extend_from_slice(src.rest());
    let mut src = Src::new(&ops_bytes);
    while !src.is_empty() {
        let op = WEIGHTS[src.u8() as usize % WEIGHTS.len()];
        let (a, b) = (src.u8(), src.u8());
        let npairs = s.borrow().pairs.len();
        let p = if npairs == 0 { 0 } else { a as usize % npairs };
        match op % 24 {
            0 => {
                if npairs < MAX_PAIRS {
                    let kind = [Kind::Unix, Kind::PipeRead, Kind::PipeWrite][b as usize % 3];
                    let (ours, peer) = new_pair(kind);
                    let mut g = s.borrow_mut();
                    g.log.push(format!("  new pair {npairs} {kind:?}"));
                    g.pairs.push(Pair {
                        kind,
                        base: Some(ours),
                        peer: Some(peer),
                        held: Vec::new(),
                        unread: 0,
                    });
                }
            }
            1..=3 => {
                let act = action(&mut src);
                s.borrow_mut().log.push(format!(
                    "  add watch on pair {p} owned={} {:?} {act:?}",
                    op != 3,
                    interest(b)
                ));
                add_watch(&s, &lp, p, op != 3, b, act);
            }
            4 | 5 => {
                s.borrow_mut().log.push("  remove:".into());
                remove_watch(&s, &lp, a, op == 5);
            }
            6 => {
                s.borrow_mut().log.push("  interest:".into());
                set_interest(&s, &lp, a, b);
            }
            7 if npairs > 0 => {
                let mut g = s.borrow_mut();
                // Not while a raw watch still uses the base fd: add_raw_fd's
                // contract is that the fd stays open until the watch is removed.
                let raw_watch = (0..g.model.watches.len()).any(|w| {
                    !g.model.watches[w].owned
                        && g.model.watches[w].file == p
                        && g.model.watches[w].alive
                });
                if !raw_watch && g.pairs[p].base.is_some() {
                    g.log.push(format!("  close base of pair {p}"));
                    g.pairs[p].base = None;
                    g.check_eof();
                }
            }
            8 | 9 if npairs > 0 => {
                let g = s.borrow();
                let pair = &g.pairs[p];
                let writable_peer =
                    pair.kind == Kind::Unix || (pair.kind == Kind::PipeRead && g.file_open(p));
                if let (Some(peer), true) = (&pair.peer, writable_peer)
                    && write_some(peer.as_raw_fd(), 1 + b as usize % 64)
                {
                    drop(g);
                    let mut g = s.borrow_mut();
                    g.model.wake_keyed(p, sem::IN);
                    g.log.push(format!("  peer {p} writes"));
                }
            }
            10 if npairs > 0 => {
                let mut g = s.borrow_mut();
                if let Some(peer) = &g.pairs[p].peer {
                    drain(peer.as_raw_fd());
                    // Each of our writes the peer consumed frees one skb, and
                    // each free is a write-space wake-up (key OUT) on our
                    // socket (unix_write_space). A pipe that was never full
                    // wakes no writer.
                    let unread = std::mem::take(&mut g.pairs[p].unread);
                    if g.pairs[p].kind == Kind::Unix {
                        for _ in 0..unread {
                            g.model.wake_keyed(p, sem::OUT);
                        }
                    }
                    g.log.push(format!("  peer {p} reads"));
                }
            }
            11 if npairs > 0 => {
                let mut g = s.borrow_mut();
                if g.pairs[p].kind == Kind::Unix
                    && let Some(peer) = &g.pairs[p].peer
                {
                    // SAFETY: plain syscall on an open socket.
                    unsafe { libc::shutdown(peer.as_raw_fd(), libc::SHUT_WR) };
                    g.model.wake_state(p);
                    g.log.push(format!("  peer {p} shutdown(SHUT_WR)"));
                }
            }
            12 if npairs > 0 => {
                let mut g = s.borrow_mut();
                if g.pairs[p].peer.take().is_some() {
                    g.model.wake_state(p);
                    g.log.push(format!("  peer {p} closes"));
                }
            }
            13 if npairs > 0 => {
                let mut g = s.borrow_mut();
                let kind = g.pairs[p].kind;
                let peer_reads = g.pairs[p].peer.is_some();
                if kind != Kind::PipeRead
                    && (kind == Kind::Unix || peer_reads)
                    && g.pairs[p].unread < 8
                    && let Some(fd) = g.any_fd(p)
                {
                    write_some(fd, 1 + b as usize % 64);
                    g.pairs[p].unread += 1;
                    g.log.push(format!("  our end {p} writes"));
                }
            }
            14 if npairs > 0 => {
                let mut g = s.borrow_mut();
                if let Some(fd) = g.any_fd(p) {
                    drain(fd);
                    g.log.push(format!("  our end {p} reads"));
                }
            }
            15 | 16 => {
                let act = action(&mut src);
                add_timer(&s, &lp, if op == 15 { Some(b) } else { None }, act);
            }
            17 => perform(&s, &lp, Action::CancelTimer(a), None),
            18 => perform(&s, &lp, Action::UpdateTimer(a, b), None),
            19 => {
                let act = action(&mut src);
                // A rare variant, so that older corpus inputs keep their meaning.
                if b >= 224 {
                    add_remote(&s, &lp, act);
                } else {
                    add_immediate(&s, &lp, act);
                }
            }
            20 => perform(&s, &lp, Action::CancelImmediate(a), None),
            21 => perform(&s, &lp, Action::RescheduleImmediate(a), None),
            22 => {
                let ms = u64::from(b % 8);
                clock.advance(Duration::from_millis(ms));
                let mut g = s.borrow_mut();
                g.model.advance(ms * MS);
                g.log.push(format!("  clock +{ms} ms"));
            }
            _ => {
                let n = if a % 4 == 0 { 6 } else { 1 };
                for _ in 0..n {
                    run_once(&s, &lp);
                }
            }
        }
        let g = s.borrow();
        g.check_eof();
        let enters = samples(lp.stats().unwrap());
        if g.checking && enters != g.enters_seen {
            fail(
                &g,
                format!(
                    "the loop entered the kernel {enters} times, the model accounted for {}",
                    g.enters_seen
                ),
            );
        }
    }

    // Teardown: remove everything, let the kernel finish the cancels.
    if std::env::var_os("RINGLOOP_MODEL_LOG").is_some() {
        eprintln!("ops:\n  {}", s.borrow().log.join("\n  "));
    }
    if std::env::var_os("RINGLOOP_MODEL_STATS").is_some() {
        let g = s.borrow();
        let count = |p: &str| g.log.iter().filter(|l| l.contains(p)).count();
        eprintln!(
            "model stats: fd runs {} timer runs {} immediate runs {} waits {} skipped {}",
            count("    fd "),
            count("timer ") - count("add timer"),
            count("immediate ") - count("add immediate") - count("add remote immediate"),
            count("    wait"),
            count("(skip")
        );
    }
    s.borrow_mut().checking = false;
    let ids: Vec<FdId> = s.borrow().watch_ids.clone();
    for (w, id) in ids.into_iter().enumerate() {
        let _ = lp.remove_fd(id);
        s.borrow_mut().model.remove_watch(w);
    }
    let tids: Vec<TimerId> = s.borrow().timer_ids.clone();
    for id in tids {
        let _ = lp.cancel_timer(id);
    }
    let iids: Vec<ImmediateId> = s.borrow().imm_ids.iter().map(|x| x.1).collect();
    for id in iids {
        let _ = lp.cancel_immediate(id);
    }
    // Remote immediates cannot be cancelled: they take an iteration each
    // (and do nothing now) before the loop waits and reaps the cancels.
    for _ in 0..3 + MAX_IMMEDIATES {
        match lp.run_once() {
            Ok(()) | Err(Error::WouldBlock) => {}
            Err(e) => panic!("run_once during teardown: {e}"),
        }
    }
    let in_flight = lp.stats().unwrap().in_flight;
    {
        let g = s.borrow();
        if in_flight != baseline {
            fail(
                &g,
                format!(
                    "{in_flight} operations in flight after removing everything, {baseline} at start"
                ),
            );
        }
    }
    {
        let mut g = s.borrow_mut();
        for pair in &mut g.pairs {
            pair.base = None;
            pair.held.clear();
        }
        g.check_eof();
    }
    lp.set_trace_hook(None);
    HARNESS.with(|x| x.borrow_mut().take());
    drop(lp);
    drop(s);
    let fds_after = open_fds();
    assert_eq!(fds_before, fds_after, "open fds before and after the case");
}
