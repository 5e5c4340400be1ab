//! # ringloop
//!
//! An event loop that runs on io_uring alone: one thread, one ring, and the
//! only place it blocks is `io_uring_enter`. No epoll, poll or select.
//!
//! ```text
//!   handlers / futures / libraries
//!        │  add_fd, add_timer, add_immediate, add_signal, submit(op)
//!        ▼
//!   reactor::Handle ──► State (watches, timers, immediates, signals, ops)
//!        │                 │ SQEs (POLL_ADD, cancels, user ops)
//!        ▼                 ▼
//!   run_once ──────► ring::Ring ── io_uring_enter ──► kernel
//!        ▲                 │ CQEs, routed by user_data = slot key + generation
//!        └──── one handler per iteration: signals, immediate, timer, fd/op
//! ```
//!
//! The [`reactor`] gives tevent's semantics (see `SEMANTICS.md`):
//! level-triggered fd watches built on one-shot `IORING_OP_POLL_ADD`,
//! "close means closed" (removing a watch that owns its fd cancels its poll
//! before the fd is closed, so the peer sees EOF at once), timers on the
//! monotonic clock, immediates, signals (counted by a handler, woken through the ring), immediates from
//! other threads, and a generic "submit any operation" API.
//!
//! On top of it, ordinary async Rust: the [`rt`] executor (`block_on`,
//! `spawn`, `JoinHandle`), [`time`] (sleep, timeout, interval), completion-
//! based sockets in [`net`] and files in [`fs`] (the `(result, buf)` pattern:
//! operations own their buffers), readiness for foreign fds in [`io`]
//! (`AsyncFd`), [`signal`] streams, and [`op::submit`] for any raw io_uring
//! operation.
#![warn(missing_docs)]

pub mod error;
pub mod fs;
pub mod io;
pub mod net;
pub mod op;
pub mod reactor;
mod ring;
pub mod rt;
pub mod signal;
mod sys;
pub mod time;

pub use error::{Error, Result};
pub use reactor::{
    Builder, Completion, EventKind, EventLoop, FdEvent, FdId, Handle, ImmediateId, Interest,
    ManualClock, OpId, Remote, SignalEvent, SignalId, Stats, TimerId, TracePoint, WaitTimeout,
};
pub use ring::Features;
