//! The reference model of SEMANTICS.md: a pure description of what the loop
//! must do, with no io_uring in it.
//!
//! What the kernel reports for an fd is not modelled: the harness asks the
//! kernel itself (`poll(2)` with a zero timeout, which calls the same
//! `vfs_poll` as io_uring's POLL_ADD) at the moments the loop's polls sample
//! readiness. Everything else is the contract:
//!
//! - §1 one iteration: one immediate, else one due timer, else one fd handler;
//!   every fd watch found ready in one harvest runs once before any runs
//!   again (round robin), in an order the model learns from the loop.
//! - §2 fd watches: level-triggered, the flags a handler is told (the table),
//!   a WRITE-only watch that sees a hang-up is disabled, interest changes
//!   and removals take effect at once.
//! - §3 close means closed: the harness checks the peer's view of EOF against
//!   [`Model::file_has_watch`] and its own fds.
//! - §4 timers on a manual clock: never early, `(deadline, order added)`,
//!   ASAP first, cancel and update.
//! - §5 immediates: FIFO, reschedule moves to the tail, cancel; one
//!   scheduled through a `Remote` (from the loop's own thread here) is taken
//!   by the loop's next wait, which puts it behind every immediate already
//!   scheduled.
//!
//! Readiness is sampled when the loop enters the kernel with GETEVENTS (the
//! wait of an iteration, and the flush a removal makes so that a close
//! reaches the peer); the harness tells the model about every such enter and
//! checks the loop's `stats().enters` against the count (less its drains:
//! the extra enters that collect deferred completions the kernel left for
//! later, which sample the same files as the enter before them). The loop
//! dispatches
//! the watches harvested at a wait one per iteration, with the revents it
//! harvested and the interest the watch has at dispatch time, so a watch
//! that became not-ready during a round may still be called once with stale
//! flags; that is what the loop does, and SEMANTICS.md does not forbid it.
//!
//! What a poll reports is the kernel's business, not the contract's; the
//! model follows the kernel (io_uring-facts.md §2-3, `io_poll_wake` and
//! `io_poll_check_events`) so that it can predict the loop exactly:
//! - a poll submitted (or woken without a key) is answered by `vfs_poll`,
//!   i.e. what `poll(2)` says at that enter, masked by `mask | UNMASK`;
//! - the first wake-up *with a key* (data arrived: `IN`; write space: `OUT`)
//!   that matches the mask completes a waiting one-shot poll with just that
//!   key, even if more is ready (e.g. only `OUT` although `IN` holds too);
//!   a second wake-up before the poll's task work ran makes it re-poll;
//! - RDHUP, ERR and HUP are always reported;
//! - a WRITE-only watch that saw RDHUP without OUT waits with a multishot
//!   poll (`Decision::WaitQuietly`): it reports at arm time if anything in
//!   `mask | UNMASK` holds, and then once per wake-up.
//!
//! An edge-triggered watch (`Interest::EDGE`, [`EDGE`] here) follows the
//! same table, with one multishot poll armed for as long as its mask stays
//! the same: it is not cancelled when the handler is called, so the handler
//! runs again only after a wake-up (new data, new write space, a hang-up),
//! never because readiness merely persists.
//!
//! What SEMANTICS.md promises is checked on top of that, in [`Model::on_fd`]:
//! flags are a non-empty subset of the current interest and of the readiness
//! the kernel sampled, a removed watch never runs, a WRITE-only watch that
//! saw ERR/HUP is not called and its interest becomes empty.

use std::collections::VecDeque;

/// Interest bits, as `Interest::bits()`.
pub const R: u8 = 1;
/// WRITE.
pub const W: u8 = 2;
/// ERROR.
pub const E: u8 = 4;
/// The edge-triggered mode bit (`Interest::EDGE`); not a condition.
pub const EDGE: u8 = 8;

/// The conditions of an interest, without the mode bit.
pub fn conditions(interest: u8) -> u8 {
    interest & (R | W | E)
}

/// Whether an interest asks for edge triggering.
pub fn is_edge(interest: u8) -> bool {
    interest & EDGE != 0
}

/// `poll(2)` bits.
pub const IN: u32 = libc::POLLIN as u32;
/// Writable.
pub const OUT: u32 = libc::POLLOUT as u32;
/// Error.
pub const ERR: u32 = libc::POLLERR as u32;
/// Hang-up.
pub const HUP: u32 = libc::POLLHUP as u32;
/// Peer half-closed.
pub const RDHUP: u32 = libc::POLLRDHUP as u32;
/// Not open.
pub const NVAL: u32 = libc::POLLNVAL as u32;
/// What io_uring's POLL_ADD reports whether asked or not (io_uring-facts.md).
pub const UNMASK: u32 = ERR | HUP | NVAL | RDHUP;

/// §2 "the kernel is asked for".
pub fn poll_mask(interest: u8) -> u32 {
    let mut m = 0;
    if interest & R != 0 {
        m |= IN | RDHUP;
    }
    if interest & W != 0 {
        m |= OUT;
    }
    if interest & E != 0 {
        m |= RDHUP;
    }
    m
}

/// What a harvested readiness means for a watch with `interest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Call the handler with these flags.
    Call(u8),
    /// Not called; keep watching.
    Skip,
    /// A WRITE-only watch saw ERR/HUP: not called, interest becomes empty.
    DisableWrite,
    /// WRITE-only, RDHUP and not writable: not called; the loop waits with a
    /// multishot poll so that the level-triggered RDHUP does not spin it.
    Quiet,
}

/// §2 "What the handler is told", written out from the text (the mode bit
/// does not change it).
pub fn verdict(rev: u32, interest: u8) -> Verdict {
    let interest = conditions(interest);
    let wants_r_or_e = interest & (R | E) != 0;
    let hangup = rev & (ERR | HUP) != 0 || (rev & RDHUP != 0 && wants_r_or_e);
    let mut flags = 0;
    if hangup {
        if !wants_r_or_e {
            return if interest == 0 {
                Verdict::Skip
            } else {
                Verdict::DisableWrite
            };
        }
        flags |= interest & (R | E);
    }
    if rev & IN != 0 {
        flags |= interest & R;
    }
    if rev & OUT != 0 {
        flags |= interest & W;
    }
    if flags != 0 {
        Verdict::Call(flags)
    } else if rev & RDHUP != 0 && interest == W {
        Verdict::Quiet
    } else {
        Verdict::Skip
    }
}

/// Pending wake-ups of a multishot poll, run as task work at the next enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultiWake {
    /// None.
    Idle,
    /// One wake-up with this key: the CQE carries just the key.
    Keyed(u32),
    /// A wake-up without a key, or more than one: the kernel polls again.
    Repoll,
}

/// The state of a watch's kernel poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// No poll.
    Idle,
    /// Armed with this mask; the SQE is not submitted yet, so the kernel
    /// samples readiness at the next flush.
    Pending(u32),
    /// Submitted and not ready; `woken` by a state change (a wake-up without
    /// a key), so the kernel polls again at the next flush.
    Waiting(u32, bool),
    /// Completed with `(mask, revents)` at a flush, not yet harvested.
    Done(u32, u32),
    /// A multishot poll (WRITE-only watch that saw only RDHUP), not submitted.
    MultiPending(u32),
    /// A submitted multishot poll: `(mask, pending wake-ups, revents of the
    /// CQEs posted and not yet harvested, ORed)`. It stays armed until the
    /// loop cancels it (when it calls the handler, or on interest change).
    Multi(u32, MultiWake, u32),
}

impl Poll {
    /// Whether the loop has a poll armed (its `Watch::armed`).
    pub fn armed(self) -> bool {
        self != Poll::Idle
    }

    /// The mask, if armed.
    fn mask(self) -> Option<u32> {
        match self {
            Poll::Idle => None,
            Poll::Pending(m)
            | Poll::Waiting(m, _)
            | Poll::Done(m, _)
            | Poll::MultiPending(m)
            | Poll::Multi(m, _, _) => Some(m),
        }
    }

    fn multishot(self) -> bool {
        matches!(self, Poll::MultiPending(_) | Poll::Multi(..))
    }
}

/// A harvested watch waiting for its turn in the current round.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// What was harvested.
    pub rev: u32,
    /// The loop may already have looked at it and skipped it (it was not
    /// callable at some iteration start).
    pub maybe_processed: bool,
}

/// One fd watch.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Index of the harness's file (socket pair or pipe end).
    pub file: usize,
    /// Owns (a dup of) its fd, rather than a raw watch on the harness's fd.
    pub owned: bool,
    /// Not removed.
    pub alive: bool,
    /// Current interest.
    pub interest: u8,
    /// Its poll.
    pub poll: Poll,
    /// In the current round.
    pub ready: Option<Ready>,
}

/// What the model expects of the current iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expect {
    /// Between iterations.
    #[default]
    Idle,
    /// This immediate runs.
    Immediate(usize),
    /// This timer runs.
    Timer(usize),
    /// One fd handler of the round runs.
    Fd,
    /// Nothing is ready: the loop must wait.
    Wait,
    /// Waiting; the harvest follows.
    Waiting,
    /// Nothing was harvested that runs: the iteration would block.
    WouldBlock,
    /// A handler ran.
    Ran,
}

/// The whole model.
#[derive(Debug, Default)]
pub struct Model {
    /// Every watch ever added, by index.
    pub watches: Vec<Watch>,
    /// Pending timers: `(index, deadline ns, sequence)`.
    pub timers: Vec<(usize, u64, u64)>,
    /// Number of timers ever added.
    pub timer_count: usize,
    /// Last sequence number given to a timer.
    pub seq: u64,
    /// Scheduled immediates in run order.
    pub immediates: VecDeque<usize>,
    /// Number of immediates ever added, remote ones included.
    pub immediate_count: usize,
    /// Scheduled through a `Remote` and not yet taken by a wait.
    pub remote: Vec<usize>,
    /// Whether the kernel was given work since the last flush: a wake-up
    /// that reached a poll (it queues the poll's task work), or the first
    /// remote immediate of a burst (its eventfd write wakes the loop's own
    /// poll).
    pub unflushed: bool,
    /// The manual clock, ns.
    pub now: u64,
    /// What the current iteration must do.
    pub expect: Expect,
}

type Check = Result<(), String>;

impl Model {
    // ---- fd watches ----

    /// Adds a watch; returns its index.
    pub fn add_watch(&mut self, file: usize, owned: bool, interest: u8) -> usize {
        self.watches.push(Watch {
            file,
            owned,
            alive: true,
            interest: 0,
            poll: Poll::Idle,
            ready: None,
        });
        let w = self.watches.len() - 1;
        self.set_interest(w, interest);
        w
    }

    /// Whether watch `w` exists and is not removed.
    pub fn alive(&self, w: usize) -> bool {
        self.watches.get(w).is_some_and(|x| x.alive)
    }

    fn arm_if_possible(&mut self, w: usize) {
        let x = &mut self.watches[w];
        if x.alive && conditions(x.interest) != 0 && x.poll == Poll::Idle && x.ready.is_none() {
            let mask = poll_mask(x.interest);
            x.poll = if is_edge(x.interest) {
                Poll::MultiPending(mask)
            } else {
                Poll::Pending(mask)
            };
        }
    }

    /// Changes interest (§2: takes effect at once). The loop keeps a poll
    /// whose mask is unchanged if it is one-shot for a level-triggered watch
    /// or multishot for an edge-triggered one, and replaces any other (a
    /// level watch's multishot poll, waiting quietly, is always replaced).
    pub fn set_interest(&mut self, w: usize, interest: u8) {
        let x = &mut self.watches[w];
        if let Some(m) = x.poll.mask()
            && (conditions(interest) == 0
                || m != poll_mask(interest)
                || x.poll.multishot() != is_edge(interest))
        {
            x.poll = Poll::Idle;
        }
        x.interest = interest;
        self.arm_if_possible(w);
    }

    /// Whether changing `w`'s interest now has one outcome the model can
    /// predict: not when the loop may or may not already have skipped it in
    /// this round.
    pub fn may_change_interest(&self, w: usize) -> bool {
        !self.alive(w) || self.watches[w].ready.is_none_or(|r| !r.maybe_processed)
    }

    /// The poll watch `w` has after the loop looked at it in this round
    /// and did not call it, if that may have happened and changes its poll;
    /// `None` when its poll is the same either way.
    fn poll_if_processed(&self, w: usize) -> Option<Poll> {
        let x = &self.watches[w];
        if !x.alive || !x.ready.is_some_and(|r| r.maybe_processed) || self.callable(w).is_some() {
            return None;
        }
        let mut m = Model {
            watches: vec![x.clone()],
            ..Model::default()
        };
        m.process_not_called(0).ok()?;
        let after = m.watches[0].poll;
        (after != x.poll).then_some(after)
    }

    /// Whether a flush now (a removal) samples a predictable set of polls:
    /// not when a skipped watch may or may not be re-armed yet.
    pub fn may_flush(&self) -> bool {
        (0..self.watches.len()).all(|w| self.poll_if_processed(w).is_none())
    }

    /// Whether the loop has a poll armed for `w`; `None` if that depends on
    /// whether the loop already looked at it in this round.
    pub fn armed(&self, w: usize) -> Option<bool> {
        let now = self.alive(w) && self.watches[w].poll.armed();
        match self.poll_if_processed(w) {
            Some(p) if p.armed() != now => None,
            _ => Some(now),
        }
    }

    /// Removes a watch (§2: its handler never runs again).
    pub fn remove_watch(&mut self, w: usize) {
        let x = &mut self.watches[w];
        x.alive = false;
        x.poll = Poll::Idle;
        x.ready = None;
    }

    /// Whether some live watch owns an fd of `file` (so it is still open).
    pub fn file_has_owner(&self, file: usize) -> bool {
        self.watches
            .iter()
            .any(|x| x.alive && x.owned && x.file == file)
    }

    /// Whether some live watch watches `file`.
    pub fn file_has_watch(&self, file: usize) -> bool {
        self.watches.iter().any(|x| x.alive && x.file == file)
    }

    /// Whether an `io_uring_enter` now would find work in the kernel for
    /// the model: a poll to submit, or task work that a wake-up or a remote
    /// immediate queued since the last flush. A loop whose non-blocking
    /// wait finds none may skip the enter (`Ring::flush_unless_idle`); one
    /// that finds some must not.
    pub fn needs_enter(&self) -> bool {
        self.unflushed
            || self.watches.iter().filter(|x| x.alive).any(|x| {
                matches!(
                    x.poll,
                    Poll::Pending(_)
                        | Poll::Waiting(_, true)
                        | Poll::MultiPending(_)
                        | Poll::Multi(_, MultiWake::Keyed(_) | MultiWake::Repoll, _)
                )
            })
    }

    /// An `io_uring_enter` with GETEVENTS: the kernel polls every newly
    /// submitted poll and every one woken by a state change; `readiness(file)`
    /// is what `poll(2)` says now.
    pub fn flush(&mut self, readiness: &dyn Fn(usize) -> u32) {
        self.unflushed = false;
        for x in self.watches.iter_mut().filter(|x| x.alive) {
            let file = x.file;
            let sample = |m: u32| readiness(file) & (m | UNMASK);
            x.poll = match x.poll {
                Poll::Pending(m) | Poll::Waiting(m, true) => match sample(m) {
                    0 => Poll::Waiting(m, false),
                    rev => Poll::Done(m, rev),
                },
                Poll::MultiPending(m) => Poll::Multi(m, MultiWake::Idle, sample(m)),
                Poll::Multi(m, MultiWake::Keyed(k), posted) => {
                    Poll::Multi(m, MultiWake::Idle, posted | (k & (m | UNMASK)))
                }
                Poll::Multi(m, MultiWake::Repoll, posted) => {
                    Poll::Multi(m, MultiWake::Idle, posted | sample(m))
                }
                p => p,
            };
        }
    }

    /// A wake-up with a key (data arrived: `IN`; write space: `OUT`). Polls
    /// whose `mask | UNMASK` does not meet the key ignore it. A waiting
    /// one-shot poll completes at once with just the key and leaves the wait
    /// queue, so later changes do not reach it (unless an earlier wake-up
    /// without a key already made it re-poll). A multishot poll stays queued.
    pub fn wake_keyed(&mut self, file: usize, key: u32) {
        for x in self
            .watches
            .iter_mut()
            .filter(|x| x.alive && x.file == file)
        {
            let before = x.poll;
            x.poll = match x.poll {
                Poll::Waiting(m, false) if key & (m | UNMASK) != 0 => {
                    Poll::Done(m, key & (m | UNMASK))
                }
                Poll::Multi(m, MultiWake::Idle, p) if key & (m | UNMASK) != 0 => {
                    Poll::Multi(m, MultiWake::Keyed(key), p)
                }
                Poll::Multi(m, _, p) if key & (m | UNMASK) != 0 => {
                    Poll::Multi(m, MultiWake::Repoll, p)
                }
                p => p,
            };
            self.unflushed |= x.poll != before;
        }
    }

    /// A wake-up without a key (shutdown, close): waiting polls are polled
    /// again at the next flush.
    pub fn wake_state(&mut self, file: usize) {
        for x in self
            .watches
            .iter_mut()
            .filter(|x| x.alive && x.file == file)
        {
            x.poll = match x.poll {
                Poll::Waiting(m, _) => Poll::Waiting(m, true),
                Poll::Multi(m, _, p) => Poll::Multi(m, MultiWake::Repoll, p),
                p => p,
            };
            self.unflushed |= matches!(x.poll, Poll::Waiting(..) | Poll::Multi(..));
        }
    }

    fn harvest(&mut self) {
        for x in self.watches.iter_mut().filter(|x| x.alive) {
            let rev = match x.poll {
                Poll::Done(_, rev) => {
                    x.poll = Poll::Idle;
                    rev
                }
                Poll::Multi(m, wake, posted) if posted != 0 => {
                    x.poll = Poll::Multi(m, wake, 0);
                    posted
                }
                _ => continue,
            };
            x.ready = Some(Ready {
                rev,
                maybe_processed: false,
            });
        }
    }

    fn callable(&self, w: usize) -> Option<u8> {
        let x = &self.watches[w];
        match (x.alive, x.ready) {
            (true, Some(r)) => match verdict(r.rev, x.interest) {
                Verdict::Call(f) => Some(f),
                _ => None,
            },
            _ => None,
        }
    }

    fn any_callable(&self) -> bool {
        (0..self.watches.len()).any(|w| self.callable(w).is_some())
    }

    fn mark_maybe_processed(&mut self) {
        for w in 0..self.watches.len() {
            if self.callable(w).is_none()
                && let Some(r) = self.watches[w].ready.as_mut()
            {
                r.maybe_processed = true;
            }
        }
    }

    /// The loop looks at ready watch `w` and does not call it
    /// (`prepare_fd`'s `Rearm`, `WaitQuietly` and `DisableWrite`).
    fn process_not_called(&mut self, w: usize) -> Check {
        let x = &mut self.watches[w];
        let Some(r) = x.ready.filter(|_| x.alive) else {
            return Ok(());
        };
        x.ready = None;
        match verdict(r.rev, x.interest) {
            Verdict::Call(f) => {
                return Err(format!(
                    "watch {w} was harvested ready (revents {:#x}, interest {}) and should have run with {f} before the loop waited",
                    r.rev, x.interest
                ));
            }
            Verdict::Skip => self.arm_if_possible(w),
            // An armed multishot poll stays; otherwise one is armed.
            Verdict::Quiet => {
                if x.poll == Poll::Idle {
                    x.poll = Poll::MultiPending(poll_mask(x.interest));
                }
            }
            Verdict::DisableWrite => {
                x.interest = 0;
                x.poll = Poll::Idle;
            }
        }
        Ok(())
    }

    /// The loop went through its whole ready queue: every watch left in the
    /// round was looked at and not called.
    fn finish_round(&mut self) -> Check {
        for w in 0..self.watches.len() {
            self.process_not_called(w)?;
        }
        Ok(())
    }

    // ---- timers (§4) ----

    /// Adds a timer `after` ns from now (`None`: as soon as possible).
    pub fn add_timer(&mut self, after: Option<u64>) -> usize {
        let deadline = after.map_or(0, |d| self.now.saturating_add(d).max(1));
        self.seq += 1;
        self.timers.push((self.timer_count, deadline, self.seq));
        self.timer_count += 1;
        self.timer_count - 1
    }

    /// Cancels a timer; whether it was pending.
    pub fn cancel_timer(&mut self, t: usize) -> bool {
        let before = self.timers.len();
        self.timers.retain(|x| x.0 != t);
        before != self.timers.len()
    }

    /// Moves a timer behind those with an equal deadline; whether it was pending.
    pub fn update_timer(&mut self, t: usize, after: u64) -> bool {
        self.seq += 1;
        let (now, seq) = (self.now, self.seq);
        match self.timers.iter_mut().find(|x| x.0 == t) {
            Some(x) => {
                x.1 = now.saturating_add(after).max(1);
                x.2 = seq;
                true
            }
            None => false,
        }
    }

    /// Whether timer `t` is pending.
    pub fn timer_pending(&self, t: usize) -> bool {
        self.timers.iter().any(|x| x.0 == t)
    }

    fn due_timer(&self) -> Option<usize> {
        self.timers
            .iter()
            .filter(|x| x.1 <= self.now)
            .min_by_key(|x| (x.1, x.2))
            .map(|x| x.0)
    }

    // ---- immediates (§5) ----

    /// Schedules a new immediate at the tail.
    pub fn add_immediate(&mut self) -> usize {
        self.immediates.push_back(self.immediate_count);
        self.immediate_count += 1;
        self.immediate_count - 1
    }

    /// Schedules an immediate through a `Remote`: it joins the FIFO at the
    /// loop's next wait, which reaps the wake-up.
    pub fn add_remote(&mut self) -> usize {
        // Only the first of a burst writes the eventfd: until a wait takes
        // the burst, later ones find the wake-up pending and skip it.
        self.unflushed |= self.remote.is_empty();
        self.remote.push(self.immediate_count);
        self.immediate_count += 1;
        self.immediate_count - 1
    }

    /// Cancels; whether it was scheduled.
    pub fn cancel_immediate(&mut self, i: usize) -> bool {
        let before = self.immediates.len();
        self.immediates.retain(|&x| x != i);
        before != self.immediates.len()
    }

    /// Moves to the tail; whether it was scheduled.
    pub fn reschedule_immediate(&mut self, i: usize) -> bool {
        let found = self.cancel_immediate(i);
        if found {
            self.immediates.push_back(i);
        }
        found
    }

    // ---- one iteration (§1) ----

    /// `run_once` is about to be called.
    pub fn iteration_start(&mut self) -> Check {
        if self.expect != Expect::Idle {
            return Err(format!("iteration started in state {:?}", self.expect));
        }
        self.mark_maybe_processed();
        self.expect = if let Some(&i) = self.immediates.front() {
            Expect::Immediate(i)
        } else if let Some(t) = self.due_timer() {
            Expect::Timer(t)
        } else if self.any_callable() {
            Expect::Fd
        } else {
            Expect::Wait
        };
        Ok(())
    }

    /// Immediate `i`'s handler runs.
    pub fn on_immediate(&mut self, i: usize) -> Check {
        if self.expect != Expect::Immediate(i) {
            return Err(format!("immediate {i} ran, expected {:?}", self.expect));
        }
        self.immediates.pop_front();
        self.expect = Expect::Ran;
        Ok(())
    }

    /// Timer `t`'s handler runs.
    pub fn on_timer(&mut self, t: usize) -> Check {
        if self.expect != Expect::Timer(t) {
            return Err(format!("timer {t} ran, expected {:?}", self.expect));
        }
        self.cancel_timer(t);
        self.expect = Expect::Ran;
        Ok(())
    }

    /// Watch `w`'s handler runs with `flags`.
    pub fn on_fd(&mut self, w: usize, flags: u8) -> Check {
        if self.expect != Expect::Fd {
            return Err(format!(
                "watch {w} ran with {flags}, expected {:?}",
                self.expect
            ));
        }
        if !self.alive(w) {
            return Err(format!("watch {w} ran after it was removed"));
        }
        let interest = self.watches[w].interest;
        if flags == 0 || flags & !interest != 0 {
            return Err(format!(
                "watch {w} ran with {flags}: not a non-empty subset of its interest {interest}"
            ));
        }
        match self.callable(w) {
            Some(f) if f == flags => {}
            other => {
                let x = &self.watches[w];
                return Err(format!(
                    "watch {w} ran with {flags}, model says {other:?} (harvested {:?}, interest {})",
                    x.ready, x.interest
                ));
            }
        }
        // The loop cancels a poll still armed (a level watch's multishot
        // one) before the call; an edge watch keeps its multishot poll.
        let x = &mut self.watches[w];
        x.ready = None;
        if !is_edge(x.interest) {
            x.poll = Poll::Idle;
        }
        self.expect = Expect::Ran;
        Ok(())
    }

    /// An fd handler returned: its watch polls again.
    pub fn fd_done(&mut self, w: usize) {
        if self.alive(w) {
            self.arm_if_possible(w);
        }
    }

    /// The loop is about to enter the kernel to wait.
    pub fn before_wait(&mut self, readiness: &dyn Fn(usize) -> u32) -> Check {
        if self.expect != Expect::Wait {
            let callable: Vec<String> = (0..self.watches.len())
                .filter_map(|w| {
                    let x = &self.watches[w];
                    self.callable(w).map(|f| {
                        format!(
                            "watch {w} with {f} (harvested {:?}, interest {})",
                            x.ready, x.interest
                        )
                    })
                })
                .collect();
            return Err(format!(
                "loop waits, expected {:?}; callable: [{}]",
                self.expect,
                callable.join(", ")
            ));
        }
        self.finish_round()?;
        self.flush(readiness);
        self.expect = Expect::Waiting;
        Ok(())
    }

    /// The loop is back from the kernel and harvested.
    pub fn after_wait(&mut self) -> Check {
        if self.expect != Expect::Waiting {
            return Err(format!("loop woke, expected {:?}", self.expect));
        }
        self.harvest();
        self.mark_maybe_processed();
        // The loop only waits with no immediate scheduled, so the remote
        // ones taken now are the whole FIFO, and they run before any fd.
        self.immediates.extend(self.remote.drain(..));
        self.expect = if let Some(&i) = self.immediates.front() {
            Expect::Immediate(i)
        } else if self.any_callable() {
            Expect::Fd
        } else {
            Expect::WouldBlock
        };
        Ok(())
    }

    /// `run_once` returned; `would_block` if it said so.
    pub fn iteration_end(&mut self, would_block: bool) -> Check {
        let expect = std::mem::replace(&mut self.expect, Expect::Idle);
        match (expect, would_block) {
            (Expect::Ran, false) => Ok(()),
            (Expect::WouldBlock, true) => self.finish_round(),
            (e, b) => Err(format!("run_once returned would_block={b} in state {e:?}")),
        }
    }

    /// Advances the manual clock.
    pub fn advance(&mut self, ns: u64) {
        self.now = self.now.saturating_add(ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_follows_the_semantics_table() {
        assert_eq!(verdict(IN | HUP | RDHUP, R), Verdict::Call(R));
        assert_eq!(verdict(IN, E), Verdict::Skip);
        assert_eq!(verdict(RDHUP, E), Verdict::Call(E));
        assert_eq!(verdict(IN | HUP | RDHUP, R | E), Verdict::Call(R | E));
        assert_eq!(verdict(OUT | HUP | RDHUP, W), Verdict::DisableWrite);
        assert_eq!(verdict(OUT | ERR, W), Verdict::DisableWrite);
        assert_eq!(verdict(OUT | RDHUP, W), Verdict::Call(W));
        assert_eq!(verdict(OUT | ERR, W | E), Verdict::Call(W | E));
        assert_eq!(verdict(IN, R | EDGE), Verdict::Call(R));
        assert_eq!(verdict(RDHUP, W | EDGE), Verdict::Quiet);
    }

    /// Runs one waiting iteration with the fd's readiness at `rev`; returns
    /// the flags a handler of watch 0 ran with, if one ran.
    fn wait_iteration(m: &mut Model, rev: u32) -> Option<u8> {
        m.iteration_start().unwrap();
        assert_eq!(m.expect, Expect::Wait);
        m.before_wait(&|_| rev).unwrap();
        m.after_wait().unwrap();
        if m.expect == Expect::WouldBlock {
            m.iteration_end(true).unwrap();
            return None;
        }
        let flags = m.callable(0).expect("callable");
        m.on_fd(0, flags).unwrap();
        m.fd_done(0);
        m.iteration_end(false).unwrap();
        Some(flags)
    }

    #[test]
    fn level_watch_runs_while_ready_edge_watch_once_per_wake_up() {
        for (interest, again) in [(R, Some(R)), (R | EDGE, None)] {
            let mut m = Model::default();
            m.add_watch(0, true, interest);
            assert_eq!(wait_iteration(&mut m, IN | OUT), Some(R), "{interest}");
            // Still readable and nothing new arrived.
            assert_eq!(wait_iteration(&mut m, IN | OUT), again, "{interest}");
            // New data arrives: both run.
            m.wake_keyed(0, IN);
            assert_eq!(wait_iteration(&mut m, IN | OUT), Some(R), "{interest}");
        }
    }

    #[test]
    fn edge_watch_keeps_one_multishot_poll_until_its_mask_changes() {
        let mut m = Model::default();
        m.add_watch(0, true, R | EDGE);
        assert_eq!(m.watches[0].poll, Poll::MultiPending(IN | RDHUP));
        wait_iteration(&mut m, IN);
        assert!(matches!(m.watches[0].poll, Poll::Multi(..)));
        // Same mask (ERROR adds only RDHUP, already asked for): kept.
        m.set_interest(0, R | E | EDGE);
        assert!(matches!(m.watches[0].poll, Poll::Multi(..)));
        // Back to level triggering: replaced by a one-shot poll.
        m.set_interest(0, R | E);
        assert_eq!(m.watches[0].poll, Poll::Pending(IN | RDHUP));
    }
}
