//! Trace points, at the places tevent traces: around the wait, before each
//! handler, and when events are attached and detached.

/// The kinds of event a loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An fd watch.
    Fd,
    /// A timer.
    Timer,
    /// An immediate (also one scheduled from another thread).
    Immediate,
    /// A signal watch.
    Signal,
    /// A generic io_uring operation's callback.
    Op,
}

/// Where the loop is, as given to the hook set with
/// [`Handle::set_trace_hook`](crate::Handle::set_trace_hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TracePoint {
    /// About to block in `io_uring_enter`.
    BeforeWait,
    /// Back from `io_uring_enter`.
    AfterWait,
    /// About to run a handler of this kind.
    BeforeHandler(EventKind),
    /// An event of this kind was added.
    Attach(EventKind),
    /// An event of this kind was removed or cancelled by the user.
    Detach(EventKind),
}
