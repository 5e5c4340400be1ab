//! The reactor: a single-threaded event loop that blocks only in `io_uring_enter`.
//!
//! [`EventLoop`] owns the loop; [`Handle`] is a cheap clone that handlers,
//! futures and libraries use to add, change and remove events. All state
//! sits behind one `RefCell` that is never borrowed while user code runs:
//! a handler is taken out of its slot, called, and put back, so it may
//! change or remove any event, itself included.
//!
//! Each concern has its own file: [`fd`] watches, [`timer`]s,
//! [`immediate`]s, signals, cross-thread [`Remote`] immediates, generic
//! [`op`]erations and trace points.

pub(crate) mod bufpool;
pub mod fd;
pub mod immediate;
mod multi_op;
pub mod op;
pub(crate) mod readiness;
mod remote;
mod schedule;
mod signal;
pub mod timer;
mod trace;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{RawWakerVTable, Waker};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue};
use slotmap::{Key, KeyData, SlotMap};

use crate::error::{Error, Result};
use crate::ring::{Features, ReapPasses, Ring, RingConfig};
use crate::sys;

pub use fd::{Decision, FdEvent, FdId, Interest, decide};
pub use immediate::{ImmediateId, ImmediateQueue};
pub use op::{Completion, OpId};
pub use remote::Remote;
pub use signal::{SignalEvent, SignalId};
pub use timer::{TimerId, TimerQueue};
pub use trace::{EventKind, TracePoint};

use fd::Watch;
use op::{Deferred, TaskOp, wake_or_defer};
use remote::RemoteShared;
use signal::Signals;

/// An fd handler: called with the loop and what is ready.
pub type FdHandler = Box<dyn FnMut(&Handle, FdEvent)>;
type OnceHandler = Box<dyn FnOnce(&Handle)>;
type OpCallback = Box<dyn FnMut(&Handle, Completion)>;
type SignalHandler = Box<dyn FnMut(&Handle, SignalEvent)>;

/// What a due timer does.
enum TimerAction {
    /// A callback-API timer: its handler runs as one iteration (SEMANTICS.md
    /// §1).
    Handler(OnceHandler),
    /// A future's sleep: firing wakes the task, and no handler runs. The
    /// future learns that it fired because its id is no longer pending.
    Wake(Option<Waker>),
}
/// A hook called at each [`TracePoint`].
pub type TraceHook = Box<dyn FnMut(TracePoint)>;

/// `user_data` of internal requests whose completions are ignored (cancels).
/// Slot keys are never 0 (their version is odd), so no operation can carry it.
const IGNORE: u64 = 0;

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
const KERNEL_TURN_EVERY: u32 = 32;

/// How long an iteration may block when nothing is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitTimeout {
    /// Block at most this long (the default is 30 s, as in tevent).
    After(Duration),
    /// Block until an event arrives.
    Forever,
    /// Never block: an iteration in which nothing ran returns [`Error::WouldBlock`].
    Never,
}

/// Counters of what the loop has done; read them with [`Handle::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls of `run_once` (including those made by `run`).
    pub iterations: u64,
    /// Iterations that had nothing ready and entered the kernel to wait.
    pub waits: u64,
    /// `io_uring_enter` calls of any kind.
    pub enters: u64,
    /// Handlers run (signals, immediates, timers, fds, operation callbacks).
    pub handlers: u64,
    /// Completions reaped from the ring.
    pub completions: u64,
    /// io_uring operations submitted and not yet completed, internal ones included.
    pub in_flight: usize,
    /// Times the kernel's CQ overflow list had to be flushed.
    pub overflow_flushes: u64,
    /// Extra non-blocking `io_uring_enter` calls after a wait, made while
    /// the kernel still had deferred completions to post (with
    /// `DEFER_TASKRUN`, Linux 6.13+ runs at most 2 x 20 per call), so that
    /// one wait sees every completion ready by then. Included in `enters`.
    pub drains: u64,
}

/// A clock for tests: timers follow it instead of the monotonic clock.
///
/// Time only moves when [`ManualClock::advance`] is called. Waits in the
/// kernel are not shortened by pending timers, so drive such a loop with
/// [`WaitTimeout::Never`].
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

/// Configures an [`EventLoop`].
#[derive(Debug, Clone)]
pub struct Builder {
    ring: RingConfig,
    wait_timeout: WaitTimeout,
    allow_nesting: bool,
    clock: Option<ManualClock>,
    buf_pool: bufpool::PoolSize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            ring: RingConfig {
                sq_entries: 256,
                cq_entries: 4096,
                shrink_on_enomem: true,
                simulate_missing: None,
                // Lets CI run a whole test suite on the fallback ring.
                plain_setup: std::env::var_os("RINGLOOP_PLAIN_SETUP").is_some_and(|v| v == "1"),
            },
            wait_timeout: WaitTimeout::After(Duration::from_secs(30)),
            allow_nesting: false,
            clock: None,
            buf_pool: bufpool::PoolSize::default(),
        }
    }
}

impl Builder {
    /// Submission queue size (rounded up to a power of two by the kernel).
    ///
    /// With the default sizes (256 and 4096), a loop whose ring does not fit
    /// in the user's `RLIMIT_MEMLOCK` is built with smaller queues instead
    /// (see [`Features`]); sizes set here are used as they are, or fail.
    pub fn sq_entries(mut self, n: u32) -> Self {
        self.ring.sq_entries = n.max(1);
        self.ring.shrink_on_enomem = false;
        self
    }

    /// Completion queue size; at least the SQ size. Overflow beyond it loses
    /// nothing but costs extra `io_uring_enter` calls. As for
    /// [`Builder::sq_entries`], a size set here is not shrunk to fit
    /// `RLIMIT_MEMLOCK`.
    pub fn cq_entries(mut self, n: u32) -> Self {
        self.ring.cq_entries = n.max(1);
        self.ring.shrink_on_enomem = false;
        self
    }

    /// How long an idle iteration may block.
    pub fn wait_timeout(mut self, t: WaitTimeout) -> Self {
        self.wait_timeout = t;
        self
    }

    /// Allow `run_once` from inside a handler.
    pub fn allow_nesting(mut self, yes: bool) -> Self {
        self.allow_nesting = yes;
        self
    }

    /// Drive timers from a [`ManualClock`] instead of the monotonic clock.
    pub fn manual_clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Do not ask for SINGLE_ISSUER / DEFER_TASKRUN / SUBMIT_ALL, as on a
    /// kernel without them. For testing the fallback path; the environment
    /// variable `RINGLOOP_PLAIN_SETUP=1` makes it the default.
    pub fn plain_setup(mut self, yes: bool) -> Self {
        self.ring.plain_setup = yes;
        self
    }

    /// The pool of receive buffers that streams with multishot receives
    /// share (`net::TcpStream::enable_multishot_recv`): `count` buffers of
    /// `len` bytes, allocated and registered when a stream first asks.
    /// Default 256 x 4096. `count` must be a power of two up to 32768,
    /// `len` at least 1 and the pool at most 1 GiB, or [`Builder::build`]
    /// fails with `InvalidInput`.
    pub fn recv_buffers(mut self, count: u16, len: u32) -> Self {
        self.buf_pool = bufpool::PoolSize {
            buffers: count,
            buf_len: len,
        };
        self
    }

    /// Test hook: make the probe report a required feature as absent
    /// (for example `"IORING_FEAT_EXT_ARG"` or `"IORING_OP_POLL_ADD"`).
    #[doc(hidden)]
    pub fn simulate_missing_feature(mut self, name: &'static str) -> Self {
        self.ring.simulate_missing = Some(name);
        self
    }

    /// Builds the loop.
    pub fn build(self) -> Result<EventLoop> {
        let buf_pool_size = self.buf_pool.validate().map_err(Error::Io)?;
        let ring = Ring::new(&self.ring)?;
        let remote = Arc::new(RemoteShared::new()?);
        let mut state = State {
            ring,
            ops: SlotMap::with_key(),
            user_ops: 0,
            multi_task_ops: 0,
            watches: SlotMap::with_key(),
            active_watches: 0,
            timers: TimerQueue::default(),
            immediates: ImmediateQueue::default(),
            signals: Signals::default(),
            ready: VecDeque::new(),
            parked: Vec::new(),
            cqes: Vec::new(),
            kept_finals: HashSet::new(),
            kept_scanned: 0,
            deferred: Vec::new(),
            inline_waker: None,
            wake_armed: None,
            wake_pending: false,
            remote: remote.clone(),
            epoch: Instant::now(),
            clock_seen: 0,
            turns_in_user_space: 0,
            clock: self.clock,
            wait_timeout: self.wait_timeout,
            stats: Stats::default(),
            buf_pool: None,
            buf_pool_size,
        };
        state.arm_wake()?;
        let inner = Inner {
            state: RefCell::new(Some(state)),
            depth: Cell::new(0),
            allow_nesting: Cell::new(self.allow_nesting),
            fork_generation: sys::fork_generation(),
            trace: RefCell::new(None),
            has_trace: Cell::new(false),
            settled_at_teardown: RefCell::new(HashMap::new()),
            unread_at_teardown: RefCell::new(HashMap::new()),
        };
        Ok(EventLoop {
            handle: Handle {
                inner: Rc::new(inner),
            },
        })
    }
}

/// The event loop. Dropping it removes every event: owned fds are closed
/// (peers see EOF), in-flight operations are cancelled and their callbacks
/// run, and nothing is left in the kernel.
///
/// All methods live on [`Handle`], which this dereferences to.
pub struct EventLoop {
    handle: Handle,
}

/// A reference to a loop, for handlers, futures and libraries. Cloning is
/// cheap; once the [`EventLoop`] is dropped every call returns [`Error::LoopGone`].
#[derive(Clone)]
pub struct Handle {
    inner: Rc<Inner>,
}

impl Handle {
    /// Whether `self` and `other` are handles of the same loop.
    pub(crate) fn same_loop(&self, other: &Handle) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether the loop has not been torn down yet.
    pub(crate) fn is_alive(&self) -> bool {
        self.inner
            .state
            .try_borrow()
            .map_or(true, |state| state.is_some())
    }
}

struct Inner {
    /// `None` once the loop is torn down.
    state: RefCell<Option<State>>,
    /// How many `run_once` calls are active (more than one only when nesting).
    depth: Cell<u32>,
    allow_nesting: Cell<bool>,
    fork_generation: u64,
    trace: RefCell<Option<TraceHook>>,
    /// Whether `trace` holds a hook: one `Cell` read per trace point when
    /// none is installed (three per event), instead of a `RefCell` borrow.
    has_trace: Cell<bool>,
    /// Completions of futures' operations that were still unread when the
    /// loop was torn down, by `user_data`: their futures can still resolve.
    settled_at_teardown: RefCell<HashMap<u64, Completion>>,
    /// The same for futures' multishot operations: the completions their
    /// owners had not taken (the data of a stream's receive, whose buffers
    /// the owner's pool keeps), so that nothing received is lost.
    unread_at_teardown: RefCell<HashMap<u64, VecDeque<Completion>>>,
}

thread_local! {
    /// Whether the last reap on this thread brought at most one completion
    /// (see [`reaps_singly`]); before any reap, the loop is not batching.
    static REAPED_SINGLY: Cell<bool> = const { Cell::new(true) };
}

/// Whether the last reap of a loop on this thread brought at most one
/// completion: the loop serves one event per `io_uring_enter`. Work that
/// can be done at once is then cheaper done directly than as an operation,
/// whose completion would cost another enter before the loop can wait
/// again; when completions come in batches, operations share one enter.
/// A hint (a thread-local, so one load): with several loops on a thread it
/// describes the one that reaped last.
pub(crate) fn reaps_singly() -> bool {
    REAPED_SINGLY.get()
}

/// What an in-flight io_uring request belongs to.
enum Op {
    FdPoll(FdId),
    Wake,
    Signal,
    User {
        callback: Option<OpCallback>,
        /// The final completion has been reaped (its callback may not have run yet).
        done: bool,
        cancel_sent: bool,
        /// Submitted with [`Handle::submit`], whose callback takes one
        /// result: if the kernel says that more completions follow (a
        /// multishot operation), the operation is cancelled so that it ends.
        once: bool,
    },
    /// Awaited by a future ([`crate::op::Op`]): the completion waits here.
    Task(TaskOp),
    /// A multishot operation awaited by a future: its completions queue
    /// here. Boxed, as `Readiness` is: inline, it made the enum large enough
    /// that every operation's way into the table took a `memcpy` call
    /// (`ringloop-ops` +66 instructions per event).
    MultiTask(Box<multi_op::MultiTaskOp>),
    /// A multishot readiness poll awaited by futures ([`crate::io::AsyncFd`]).
    Readiness(Box<readiness::ReadinessOp>),
    /// Its owner is gone; the completion is dropped.
    Orphan,
}

/// A completion waiting for its turn in the fd phase.
enum Ready {
    Fd(FdId),
    Op(OpId, Completion),
}

/// One handler (or, for signals, all of them) chosen to run next.
enum Dispatch {
    Signals(Vec<(SignalId, SignalHandler, SignalEvent)>),
    Immediate(OnceHandler),
    Timer(OnceHandler),
    /// Due sleeps whose wakes wait in `State::deferred`: no handler runs.
    SleepWakes,
    Fd(FdId, FdHandler, FdEvent),
    Op(OpId, OpCallback, Completion, bool),
}

impl Dispatch {
    fn kind(&self) -> EventKind {
        match self {
            Dispatch::Signals(_) => EventKind::Signal,
            Dispatch::Immediate(_) => EventKind::Immediate,
            Dispatch::Timer(_) | Dispatch::SleepWakes => EventKind::Timer,
            Dispatch::Fd(..) => EventKind::Fd,
            Dispatch::Op(..) => EventKind::Op,
        }
    }
}

struct State {
    ring: Ring,
    ops: SlotMap<OpId, Op>,
    /// `Op::User`, `Op::Task` and `Op::MultiTask` entries the kernel has
    /// not finished: they keep `run` going.
    user_ops: usize,
    /// Futures' multishot operations not ended yet: while there are none,
    /// a reap that drains the kernel in several passes skips their limit
    /// checks (`note_unrouted`) between the passes.
    multi_task_ops: usize,
    watches: SlotMap<FdId, Watch>,
    /// Watches with a non-empty interest: they keep `run` going.
    active_watches: usize,
    timers: TimerQueue<TimerAction>,
    immediates: ImmediateQueue<OnceHandler>,
    signals: Signals,
    ready: VecDeque<Ready>,
    /// Completions of operations whose callback was running (in an outer,
    /// nested iteration) when they came up: back in `ready` when it returns.
    parked: Vec<(OpId, Completion)>,
    cqes: Vec<cqueue::Entry>,
    /// The `user_data` of each completion kept aside in `cqes` that ends
    /// its request, as far as `settle_cancels` has looked (`kept_scanned`
    /// entries): so that removing thousands of fds one after another, each
    /// settling its own cancel, looks at each kept completion once.
    kept_finals: HashSet<u64>,
    kept_scanned: usize,
    /// What completions asked for that runs user code (waking a task,
    /// releasing a dropped future's buffers): done once the state is free.
    deferred: Vec<Deferred>,
    /// The vtable of wakers that only queue a task (the runtime's, see
    /// [`Handle::set_inline_waker`]): those are woken as they are reaped,
    /// not deferred.
    inline_waker: Option<&'static RawWakerVTable>,
    wake_armed: Option<OpId>,
    wake_pending: bool,
    remote: Arc<RemoteShared>,
    epoch: Instant,
    /// The latest reading of the loop's clock taken by `next_dispatch`.
    clock_seen: u64,
    /// Immediates and due timers (or bursts of due sleeps) run since the
    /// last wait or kernel turn; see [`KERNEL_TURN_EVERY`].
    turns_in_user_space: u32,
    clock: Option<ManualClock>,
    wait_timeout: WaitTimeout,
    stats: Stats,
    /// The pool of provided receive buffers: `None` until first asked for,
    /// `Some(None)` if the kernel has none. After `ring`, so that it is
    /// freed after the ring is closed.
    buf_pool: Option<Option<Rc<bufpool::BufPool>>>,
    /// What the pool will be made with.
    buf_pool_size: bufpool::PoolSize,
}

impl Deref for EventLoop {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl EventLoop {
    /// A loop with the default configuration.
    pub fn new() -> Result<EventLoop> {
        Builder::default().build()
    }

    /// Configure a loop.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A handle to this loop.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.handle.teardown();
    }
}

/// Calls a handler taken out of its slot, then `restore`s it there even if
/// it panicked: a handler's panic reaches the caller of `run_once`, and the
/// loop stays whole (its watch still fires, its operation still ends).
fn call_then_restore<H>(
    mut handler: H,
    call: impl FnOnce(&mut H),
    restore: impl FnOnce(H),
) -> std::thread::Result<()> {
    let ran = catch_unwind(AssertUnwindSafe(|| call(&mut handler)));
    restore(handler);
    ran
}

/// Runs user code during teardown, keeping its panic in `panicked` for the
/// end: the rest of the teardown must still run, for it keeps the kernel
/// from writing into freed buffers.
fn teardown_step(panicked: &mut Option<Box<dyn std::any::Any + Send>>, step: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(step)) {
        panicked.get_or_insert(panic);
    }
}

/// Decrements the nesting depth even if a handler panics.
struct DepthGuard<'a>(&'a Cell<u32>);

impl Drop for DepthGuard<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Handle {
    /// Runs `f` on the loop state. `f` must not run user code or drop user
    /// closures: return them and drop them after this call.
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Result<R> {
        if sys::fork_generation() != self.inner.fork_generation {
            return Err(Error::Forked);
        }
        let mut guard = self
            .inner
            .state
            .try_borrow_mut()
            .map_err(|_| Error::Nested)?;
        let state = guard.as_mut().ok_or(Error::LoopGone)?;
        Ok(f(state))
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

    /// [`Handle::with`] for closures that can fail.
    fn try_with<R>(&self, f: impl FnOnce(&mut State) -> Result<R>) -> Result<R> {
        self.with(f)?
    }

    #[inline]
    fn trace(&self, point: TracePoint) {
        if self.inner.has_trace.get() {
            self.call_trace_hook(point);
        }
    }

    #[cold]
    fn call_trace_hook(&self, point: TracePoint) {
        if let Ok(mut hook) = self.inner.trace.try_borrow_mut()
            && let Some(hook) = hook.as_mut()
        {
            hook(point);
        }
    }

    /// Installs (or with `None` removes) a hook called at each trace point:
    /// before and after the loop waits, before each handler, and when events
    /// are attached and detached. It runs on the loop's thread; keep it quick.
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc};
    /// use ringloop::{EventKind, EventLoop, TracePoint};
    /// let lp = EventLoop::new()?;
    /// let timers_run = Rc::new(Cell::new(0));
    /// let seen = timers_run.clone();
    /// lp.set_trace_hook(Some(Box::new(move |point| {
    ///     if point == TracePoint::BeforeHandler(EventKind::Timer) {
    ///         seen.set(seen.get() + 1);
    ///     }
    /// })));
    /// lp.add_timer_asap(|_| {})?;
    /// lp.run()?;
    /// assert_eq!(timers_run.get(), 1);
    /// # Ok::<(), ringloop::Error>(())
    /// ```
    pub fn set_trace_hook(&self, hook: Option<TraceHook>) {
        if let Ok(mut slot) = self.inner.trace.try_borrow_mut() {
            self.inner.has_trace.set(hook.is_some());
            *slot = hook;
        }
    }

    /// What the kernel's io_uring offers, as probed at setup.
    pub fn features(&self) -> Result<Features> {
        self.with(|st| st.ring.features.clone())
    }

    /// The loop's counters.
    ///
    /// ```
    /// use ringloop::EventLoop;
    /// let lp = EventLoop::new()?;
    /// lp.add_immediate(|_| {})?;
    /// lp.run()?;
    /// let stats = lp.stats()?;
    /// assert_eq!(stats.handlers, 1);
    /// println!("{} iterations, {} io_uring_enter calls", stats.iterations, stats.enters);
    /// # Ok::<(), ringloop::Error>(())
    /// ```
    pub fn stats(&self) -> Result<Stats> {
        self.with(|st| Stats {
            enters: st.ring.enters,
            drains: st.ring.drains,
            in_flight: st.ops.len(),
            ..st.stats
        })
    }

    /// The current time on the loop's clock.
    pub fn now(&self) -> Result<Instant> {
        self.with(|st| st.instant_of(st.now_ns()))
    }

    /// How long an idle iteration may block.
    pub fn wait_timeout(&self) -> Result<WaitTimeout> {
        self.with(|st| st.wait_timeout)
    }

    /// Sets how long an idle iteration may block.
    pub fn set_wait_timeout(&self, timeout: WaitTimeout) -> Result<()> {
        self.with(|st| st.wait_timeout = timeout)
    }

    /// Allows or forbids calling `run_once` from inside a handler.
    pub fn set_allow_nesting(&self, allow: bool) {
        self.inner.allow_nesting.set(allow);
    }

    /// Whether the loop still has events that keep [`Handle::run`] going:
    /// timers, scheduled immediates, watches with a non-empty interest,
    /// signal watches, in-flight operations or
    /// immediates scheduled from other threads and not yet taken.
    pub fn has_events(&self) -> Result<bool> {
        self.with(|st| st.has_events())
    }

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
        // One borrow of the state per step: this is the hot path.
        let (mut first, mode, turned) = self.try_with(|st| {
            st.stats.iterations += 1;
            let turned = st.turns_in_user_space >= KERNEL_TURN_EVERY;
            let first = if turned {
                st.kernel_turn()?;
                None
            } else {
                st.pick_in_user_space()
            };
            let mode = if never_block {
                WaitTimeout::Never
            } else {
                st.wait_timeout
            };
            Ok((first, mode, turned))
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
        let (waited, picked) = self.with(|st| {
            let waited = st.wait(mode);
            // With no trace hook and no deferred work, no user code runs
            // between the wait and the pick: pick in the same borrow.
            let picked =
                (waited.is_ok() && !tracing && st.deferred.is_empty()).then(|| st.next_counted());
            (waited, picked)
        })?;
        let picked = match picked {
            Some(picked) => picked,
            None => {
                self.trace(TracePoint::AfterWait);
                waited?;
                self.run_deferred();
                // A signal that interrupted the wait (EINTR) is counted already.
                self.with(|st| st.next_counted())?
            }
        };
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

    fn dispatch(&self, d: Dispatch) {
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
            Dispatch::Fd(id, handler, event) => call_then_restore(
                handler,
                |h| h(self, event),
                |h| drop(self.with(|st| st.restore_fd(id, h))),
            )
            .unwrap_or_else(|panic| resume_unwind(panic)),
            Dispatch::Op(_, mut callback, completion, true) => callback(self, completion),
            Dispatch::Op(id, callback, completion, false) => call_then_restore(
                callback,
                |c| c(self, completion),
                |c| drop(self.with(|st| st.restore_op(id, c))),
            )
            .unwrap_or_else(|panic| resume_unwind(panic)),
        }
    }

    /// Hands every queued submission (cancels included) to the kernel now
    /// and runs all its deferred completion work, without blocking.
    ///
    /// The loop does this by itself on its next iteration; call it when a
    /// file must be released at once, e.g. after [`Handle::cancel_op`] of an
    /// operation on an fd you are about to close, so the peer sees EOF as
    /// soon as the close returns. Costs one `io_uring_enter`, and one more
    /// per batch of deferred work while the kernel still holds some (a
    /// `DEFER_TASKRUN` kernel runs a bounded batch per call, and the cancel
    /// may sit behind many other fds' readiness). The completions it brings
    /// in are kept for the next iteration, which routes them as if they had
    /// arrived then.
    pub fn flush(&self) -> Result<()> {
        self.try_with(|st| {
            st.ring.flush().map_err(Error::Io)?;
            let flushes = st.ring.reap(&mut st.cqes).map_err(Error::Io)?;
            st.stats.overflow_flushes += flushes;
            Ok(())
        })
    }

    /// Test and fuzzing hook: feeds a made-up completion to the dispatch path
    /// as if the kernel had posted it. Garbage, stale and duplicated
    /// `user_data` must be ignored without harm.
    #[doc(hidden)]
    pub fn inject_completion(&self, user_data: u64, result: i32, flags: u32) -> Result<()> {
        self.with(|st| st.route(user_data, result, flags))
    }

    /// Test and fuzzing hook: the `user_data` of every request in flight.
    #[doc(hidden)]
    pub fn in_flight_user_data(&self) -> Result<Vec<u64>> {
        self.with(|st| st.ops.keys().map(|k| k.data().as_ffi()).collect())
    }

    /// Tears the loop down; see [`EventLoop`]'s docs.
    fn teardown(&self) {
        let Some(mut st) = self
            .inner
            .state
            .try_borrow_mut()
            .ok()
            .and_then(|mut s| s.take())
        else {
            return;
        };
        st.remote.shut_down();
        if sys::fork_generation() != self.inner.fork_generation {
            // The ring is the parent's: dropping our mapping and fds is all the
            // child may do.
            return;
        }
        // Cancel every poll and operation, then let the kernel act on it so
        // that closing owned fds below makes peers see EOF.
        let watch_ids: Vec<FdId> = st.watches.keys().collect();
        let mut watches = Vec::with_capacity(watch_ids.len());
        let mut polls = Vec::new();
        for id in watch_ids {
            st.set_interest(id, Interest::NONE);
            if let Some(w) = st.watches.remove(id) {
                polls.extend(w.cancelled.iter().copied());
                watches.push(w);
            }
        }
        if let Some(op) = st.wake_armed.take() {
            st.cancel_poll(op);
        }
        st.signals_shutdown();
        let user_ops: Vec<OpId> = st.ops.keys().collect();
        for id in user_ops {
            st.cancel_user_op(id);
        }
        st.settle_cancels(&polls);
        // User code runs from here on (handlers' drops, close hooks,
        // callbacks, wakers); a panic in it waits for the end.
        let mut panicked = None;
        for w in watches {
            let (fd, handler, hook, owned) = (w.fd, w.handler, w.close_hook, w.owned);
            teardown_step(&mut panicked, || drop(handler));
            if let Some(hook) = hook {
                teardown_step(&mut panicked, || hook(fd));
            }
            teardown_step(&mut panicked, || drop(owned));
        }
        // Wait for the cancelled operations so that no buffer is freed while
        // the kernel may still write into it, and run their callbacks (which
        // close fds an accept or open produced).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut cancelled_at = Instant::now();
        loop {
            // One completion at a time, in order: a multishot operation can
            // have several queued, and its final one must still remove it
            // (or this would wait for the deadline). The state is out of
            // the RefCell, so a callback that uses the loop gets LoopGone.
            while let Some(r) = st.ready.pop_front() {
                let Ready::Op(id, c) = r else { continue };
                let Some(Op::User { callback, .. }) = st.ops.get_mut(id) else {
                    continue;
                };
                let cb = callback.take();
                let last = !cqueue::more(c.flags);
                if last {
                    st.remove_op(id);
                }
                if let Some(mut cb) = cb {
                    teardown_step(&mut panicked, || cb(self, c));
                    if !last && let Some(Op::User { callback, .. }) = st.ops.get_mut(id) {
                        *callback = Some(cb);
                    }
                }
            }
            let live = st.user_ops > 0;
            if !live || Instant::now() > deadline {
                break;
            }
            if cancelled_at.elapsed() >= Duration::from_millis(50) {
                // A cancel can miss a request that an io-wq worker is just
                // taking up (seen on Linux 6.1 with blocking pipe reads):
                // it then runs, and waits, as if never cancelled. Ask again.
                cancelled_at = Instant::now();
                let unfinished: Vec<OpId> = st.ops.keys().collect();
                for id in unfinished {
                    st.cancel_user_op_again(id);
                }
            }
            let _ = st.ring.wait(Some(Duration::from_millis(10)));
            st.reap();
        }
        // Anything still in flight after the deadline keeps its memory: leaking
        // a buffer is better than letting the kernel write into freed memory.
        let mut settled = self.inner.settled_at_teardown.borrow_mut();
        for (id, op) in st.ops.drain() {
            match op {
                Op::User {
                    callback: Some(cb), ..
                } => std::mem::forget(cb),
                Op::Task(task) => {
                    if let Some(c) = task.settled_unread() {
                        settled.insert(id.data().as_ffi(), c);
                    }
                    task.leak_if_in_flight();
                }
                Op::MultiTask(mut op) => {
                    if let Some(unread) = op.take_unread() {
                        self.inner
                            .unread_at_teardown
                            .borrow_mut()
                            .insert(id.data().as_ffi(), unread);
                    }
                    if op.leak_if_in_flight()
                        && let Some(Some(pool)) = &st.buf_pool
                    {
                        // The kernel may still fill the pool's buffers.
                        std::mem::forget(pool.clone());
                    }
                }
                _ => {}
            }
        }
        drop(settled);
        // Wake the futures whose operations ended and release the buffers of
        // dropped ones; the state is out of the RefCell, so this is safe.
        for work in st.deferred.drain(..) {
            teardown_step(&mut panicked, || work.run());
        }
        drop(st);
        if let Some(panic) = panicked
            && !std::thread::panicking()
        {
            resume_unwind(panic);
        }
    }
}

impl State {
    /// The loop's clock: nanoseconds since its epoch (or on its manual
    /// clock), plus one. Deadline 0 means "as soon as possible"; starting
    /// at 1 keeps every reading after it, so that a deadline of "now" is
    /// due at once even at a manual clock's start, when it reads zero.
    fn now_ns(&self) -> u64 {
        let elapsed = match &self.clock {
            Some(manual) => manual.elapsed(),
            None => self.epoch.elapsed(),
        };
        u64::try_from(elapsed.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn has_events(&self) -> bool {
        !self.timers.is_empty()
            || !self.immediates.is_empty()
            || self.active_watches > 0
            || !self.signals.is_empty()
            || self.user_ops > 0
            || self.remote.has_pending()
    }

    /// Queues an SQE that references no user memory.
    fn push_internal(&mut self, entry: squeue::Entry) {
        // SAFETY: every internal request (poll add/remove, cancel) carries its
        // arguments inside the SQE and points at no memory.
        if unsafe { self.ring.push(&entry) }.is_err() {
            // Only a failing io_uring_enter can get here; the next wait will
            // report it.
        }
    }

    /// Stops a poll: its completion will be ignored.
    ///
    /// ASYNC_CANCEL, not POLL_REMOVE: POLL_REMOVE fails with EALREADY while
    /// the poll's task work is pending (a multishot poll armed on a ready fd,
    /// say), and a multishot poll then stays armed for ever, holding its
    /// file. ASYNC_CANCEL marks it cancelled and the task work ends it.
    fn cancel_poll(&mut self, op: OpId) {
        let Some(slot) = self.ops.get_mut(op) else {
            return;
        };
        let owner = match *slot {
            Op::FdPoll(watch) => Some(watch),
            _ => None,
        };
        *slot = Op::Orphan;
        if let Some(w) = owner.and_then(|watch| self.watches.get_mut(watch)) {
            // Until the kernel has acted on the cancel the poll still holds
            // the file: removing the watch must wait for it.
            w.cancelled.retain(|old| self.ops.contains_key(*old));
            w.cancelled.push(op);
        }
        let entry = opcode::AsyncCancel::new(op.data().as_ffi())
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(IGNORE);
        self.push_internal(entry);
    }

    fn remove_op(&mut self, id: OpId) {
        if let Some(Op::User { .. }) = self.ops.remove(id) {
            self.user_ops -= 1;
        }
    }

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
        if self.clock.is_none()
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
    fn reap(&mut self) {
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
    #[inline]
    fn pick_in_user_space(&mut self) -> Option<Dispatch> {
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
    fn route(&mut self, user_data: u64, result: i32, flags: u32) {
        if user_data == IGNORE {
            return;
        }
        let key = KeyData::from_ffi(user_data);
        if key.as_ffi() != user_data {
            return;
        }
        let id = OpId::from(key);
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
            Op::FdPoll(watch) => {
                let watch = *watch;
                if !more {
                    // An `FdPoll` owns nothing; forgetting it skips the
                    // out-of-line drop of `Op` (this runs once per level
                    // event).
                    std::mem::forget(self.ops.remove(id));
                }
                self.on_poll(watch, id, result, more);
            }
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
