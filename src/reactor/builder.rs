//! [`Builder`]: how a loop is configured and set up.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slotmap::SlotMap;

use super::remote::RemoteShared;
use super::signal::Signals;
use super::{
    EventLoop, Handle, ImmediateQueue, Inner, ManualClock, State, Stats, TimerQueue, WaitTimeout,
    bufpool,
};
use crate::error::{Error, Result};
use crate::ring::{Ring, RingConfig};
use crate::sys;

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
    /// (see [`Features`](crate::ring::Features)); sizes set here are used as they are, or fail.
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
            ready: super::ReadyQueue::default(),
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
