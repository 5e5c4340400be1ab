//! Readiness for fds the application does its own I/O on: [`AsyncFd`].
//!
//! For sockets, pipes, ttys, eventfds and other pollable fds that some
//! library reads and writes itself (non-blocking), `AsyncFd` tells when to
//! try: `readable().await` / `writable().await` return a guard; the guard's
//! [`try_io`](AsyncFdReadyGuard::try_io) runs the operation and, if it hits
//! `WouldBlock`, clears the readiness so the next wait really waits.
//! Error and hang-up conditions are reported in [`Ready`] and, once seen,
//! stay until an operation in that direction would block (which a closed
//! side never does: a closed peer stays closed), so a reader sees them
//! instead of waiting forever.
//!
//! Readiness comes from one multishot `IORING_OP_POLL_ADD` per fd, armed once
//! for both directions: each wake-up of the fd posts one completion and no
//! SQE is needed to re-arm. This is edge-like, which is what "clear on
//! `WouldBlock`" needs. (Measured against the reactor's re-armed one-shot
//! polls with `benches/bench_asyncfd.rs`: on a Unix socket ping-pong both
//! cost 2 `io_uring_enter` and 2 CQEs per round trip; multishot needs no
//! re-arm SQE and measured 10.7–12.9 µs per round trip against 14.0–14.4
//! µs.) If the kernel ends the multishot poll (CQ overflow), it is re-armed.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::os::unix::net::UnixStream;
//! use ringloop::{io::AsyncFd, rt};
//! let (a, mut b) = UnixStream::pair().unwrap();
//! a.set_nonblocking(true).unwrap();
//! rt::block_on(async {
//!     let fd = AsyncFd::new(a).unwrap();
//!     b.write_all(b"hi").unwrap();
//!     let mut buf = [0u8; 8];
//!     let n = loop {
//!         let mut guard = fd.readable().await.unwrap();
//!         if let Ok(r) = guard.try_io(|mut s| s.read(&mut buf)) {
//!             break r.unwrap();
//!         }
//!     };
//!     assert_eq!(&buf[..n], b"hi");
//! });
//! ```

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::reactor::readiness::ReadinessSink;
use crate::reactor::{FdEvent, FdId, Handle, Interest, OpId};
use crate::rt;

/// Readiness of an [`AsyncFd`]: what the last wake-ups reported.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready(u8);

impl Ready {
    /// Nothing.
    pub const EMPTY: Ready = Ready(0);
    /// Readable (data, or end of stream, or an error to read).
    pub const READABLE: Ready = Ready(1);
    /// Writable (room, or an error to be told by the write).
    pub const WRITABLE: Ready = Ready(2);
    /// The peer shut down its writing side or hung up: reads return EOF.
    pub const READ_CLOSED: Ready = Ready(4);
    /// Hung up: writes fail.
    pub const WRITE_CLOSED: Ready = Ready(8);
    /// An error is pending on the fd (`POLLERR`).
    pub const ERROR: Ready = Ready(16);

    /// Whether [`Ready::READABLE`] (or a closed read side) is set.
    pub fn is_readable(self) -> bool {
        self.0 & (Self::READABLE.0 | Self::READ_CLOSED.0) != 0
    }
    /// Whether [`Ready::WRITABLE`] (or a closed write side) is set.
    pub fn is_writable(self) -> bool {
        self.0 & (Self::WRITABLE.0 | Self::WRITE_CLOSED.0) != 0
    }
    /// Whether the read side is closed.
    pub fn is_read_closed(self) -> bool {
        self.0 & Self::READ_CLOSED.0 != 0
    }
    /// Whether the write side is closed.
    pub fn is_write_closed(self) -> bool {
        self.0 & Self::WRITE_CLOSED.0 != 0
    }
    /// Whether an error is pending.
    pub fn is_error(self) -> bool {
        self.0 & Self::ERROR.0 != 0
    }
    /// Whether nothing is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn from_revents(revents: u32) -> Ready {
        let has = |bits: i16| revents & bits as u32 != 0;
        let mut r = 0;
        if has(libc::POLLIN | libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) {
            r |= Self::READABLE.0;
        }
        if has(libc::POLLOUT | libc::POLLHUP | libc::POLLERR) {
            r |= Self::WRITABLE.0;
        }
        if has(libc::POLLRDHUP | libc::POLLHUP) {
            r |= Self::READ_CLOSED.0;
        }
        if has(libc::POLLHUP) {
            r |= Self::WRITE_CLOSED.0;
        }
        if has(libc::POLLERR) {
            r |= Self::ERROR.0;
        }
        Ready(r)
    }

    fn intersects(self, other: Ready) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for Ready {
    type Output = Ready;
    fn bitor(self, rhs: Ready) -> Ready {
        Ready(self.0 | rhs.0)
    }
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::READABLE, "READABLE"),
            (Self::WRITABLE, "WRITABLE"),
            (Self::READ_CLOSED, "READ_CLOSED"),
            (Self::WRITE_CLOSED, "WRITE_CLOSED"),
            (Self::ERROR, "ERROR"),
        ];
        let parts: Vec<&str> = names
            .iter()
            .filter(|(b, _)| self.intersects(*b))
            .map(|(_, n)| *n)
            .collect();
        if parts.is_empty() {
            f.write_str("EMPTY")
        } else {
            f.write_str(&parts.join("|"))
        }
    }
}

/// Which direction a wait is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Read,
    Write,
}

impl Dir {
    fn ready(self) -> Ready {
        match self {
            Dir::Read => Ready(Ready::READABLE.0 | Ready::READ_CLOSED.0),
            Dir::Write => Ready(Ready::WRITABLE.0 | Ready::WRITE_CLOSED.0),
        }
    }
    /// The bits `clear_ready` may clear (closed sides stay set).
    fn clearable(self) -> Ready {
        match self {
            Dir::Read => Ready(Ready::READABLE.0 | Ready::ERROR.0),
            Dir::Write => Ready(Ready::WRITABLE.0 | Ready::ERROR.0),
        }
    }

    /// The bits an operation that would block clears: the closed side as
    /// well, for a closed side never blocks (a read returns 0, a write
    /// fails). A hang-up the poll reported may not last: an unconnected
    /// stream socket polls as hung up until it connects (tokio-rs/tokio#4549).
    fn cleared_by_would_block(self) -> Ready {
        match self {
            Dir::Read => self.clearable() | Ready::READ_CLOSED,
            Dir::Write => self.clearable() | Ready::WRITE_CLOSED,
        }
    }
}

/// How readiness reaches the fd's state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    /// One multishot poll for both directions (the default).
    Multishot(Option<OpId>),
    /// A reactor watch: one-shot polls re-armed while someone waits.
    Watch(FdId),
}

/// Where a wait future's waker is in its direction's [`Waiters`], so that
/// the future takes it out if dropped before its readiness arrives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Slot {
    /// The [`Waiters::round`] the waker was added in: in a later round it
    /// was woken and forgotten, and the slot names nothing.
    round: u64,
    /// 0 for `first`, `i + 1` for `more[i]`.
    index: usize,
}

/// The tasks waiting for one direction: usually one, but any number of
/// tasks may await the same `AsyncFd` at once, and each is woken.
///
/// A wait future holds the [`Slot`] of its waker and removes it when
/// dropped unfinished: a waker left behind would keep its task's memory
/// until the fd next became ready, and on an idle fd many tasks that each
/// give up waiting (a `timeout`, a `select`) would grow the list for ever.
#[derive(Default)]
struct Waiters {
    /// Counts the times the waiters were woken (see [`Slot::round`]); a
    /// `u64`, so that it never comes back to a round a slot was made in.
    round: u64,
    /// Slot 0: the one waiter of the common case.
    first: Option<Waker>,
    /// Slots 1 and up, for waiters beyond the first (rare); `None` where a
    /// wait left, its index in `free`.
    more: Vec<Option<Waker>>,
    /// The indices of the `None`s in `more`, for reuse.
    free: Vec<usize>,
    /// Wakers of `poll_read_ready`/`poll_write_ready` calls, which have no
    /// future to drop: each stays until the readiness it waits for.
    polled: Vec<Waker>,
}

impl Waiters {
    /// Puts the waker of the wait future holding `slot` here, or, if it is
    /// here already (a re-poll), keeps it unless the task's waker changed.
    #[inline]
    fn register(&mut self, slot: &mut Option<Slot>, waker: &Waker) {
        if let Some(s) = *slot
            && s.round == self.round
        {
            let held = match s.index {
                0 => &mut self.first,
                i => &mut self.more[i - 1],
            };
            match held {
                Some(w) if w.will_wake(waker) => {}
                held => *held = Some(waker.clone()),
            }
            return;
        }
        let index = if self.first.is_none() {
            self.first = Some(waker.clone());
            0
        } else if let Some(i) = self.free.pop() {
            self.more[i] = Some(waker.clone());
            i + 1
        } else {
            self.more.push(Some(waker.clone()));
            self.more.len()
        };
        *slot = Some(Slot {
            round: self.round,
            index,
        });
    }

    /// Adds the waker of a `poll_*_ready` call unless one that would wake
    /// the same task is here already.
    fn register_polled(&mut self, waker: &Waker) {
        if !self.polled.iter().any(|w| w.will_wake(waker)) {
            self.polled.push(waker.clone());
        }
    }

    /// Takes out the waker in `slot`, unless it was woken since; returns
    /// whether it did.
    #[inline]
    fn remove(&mut self, slot: Slot) -> bool {
        // A wait that completes finds its slot stale: one comparison.
        if slot.round != self.round {
            return false;
        }
        if slot.index == 0 {
            self.first = None;
        } else {
            self.remove_more(slot.index - 1);
        }
        true
    }

    fn remove_more(&mut self, i: usize) {
        self.more[i] = None;
        self.free.push(i);
        if self.free.len() == self.more.len() {
            // All gone: empty, so that `take_all` skips it again.
            self.more.clear();
            self.free.clear();
        }
    }

    fn is_waiting(&self) -> bool {
        self.first.is_some() || self.more.len() > self.free.len() || !self.polled.is_empty()
    }

    /// Hands every waiter to `wake`, and forgets them.
    #[inline]
    fn take_all(&mut self, wake: &mut dyn FnMut(Waker)) {
        self.round += 1;
        if let Some(w) = self.first.take() {
            wake(w);
        }
        // Checked first: draining even an empty `Vec` costs 22
        // instructions per event (callgrind).
        if !self.more.is_empty() || !self.polled.is_empty() {
            self.take_rest(wake);
        }
    }

    /// The rare part of `take_all`, kept out of line so that `take_all`
    /// inlines.
    #[inline(never)]
    fn take_rest(&mut self, wake: &mut dyn FnMut(Waker)) {
        self.free.clear();
        self.more.drain(..).flatten().for_each(&mut *wake);
        self.polled.drain(..).for_each(wake);
    }
}

struct State {
    ready: Ready,
    /// Counts the wake-ups recorded in `ready` (wrapping). A guard clears
    /// only if none arrived since it was made: one that did may have
    /// brought the readiness the guard's caller did not see (tokio's
    /// `clear_ready` race, which its readiness ticks close).
    tick: u32,
    readers: Waiters,
    writers: Waiters,
    /// The poll failed for good (EBADF, EINVAL: not pollable).
    error: Option<i32>,
    source: Source,
    closing: bool,
    /// The last waker found to belong to a task of the fd's own runtime (or
    /// to no runtime), so that the check costs one comparison per wait.
    checked: Option<Waker>,
}

impl State {
    fn waiters(&mut self, dir: Dir) -> &mut Waiters {
        match dir {
            Dir::Read => &mut self.readers,
            Dir::Write => &mut self.writers,
        }
    }

    /// Readiness arrived: hands the wakers of the directions now ready to
    /// `wake`.
    fn on_ready(&mut self, r: Ready, wake: &mut dyn FnMut(Waker)) {
        self.ready = self.ready | r;
        self.tick = self.tick.wrapping_add(1);
        if self.ready.intersects(Dir::Read.ready() | Ready::ERROR) {
            self.readers.take_all(wake);
        }
        if self.ready.intersects(Dir::Write.ready() | Ready::ERROR) {
            self.writers.take_all(wake);
        }
    }

    fn fail(&mut self, errno: i32, wake: &mut dyn FnMut(Waker)) {
        self.error = Some(errno);
        self.readers.take_all(wake);
        self.writers.take_all(wake);
    }
}

/// An fd registered for readiness with the current runtime's loop.
///
/// The fd should be in non-blocking mode. Dropping the `AsyncFd` stops the
/// poll and then drops `T` (closing the fd if `T` owns it); use
/// [`AsyncFd::into_inner`] to keep it.
///
/// Readiness reaches that loop only, so waits belong to that runtime. A
/// task of another runtime of the thread, while the first is alive (and
/// would never wake it), gets the readiness already seen, else an error at
/// once instead of waiting; once the first runtime is dropped, waits fail
/// saying so. To wait under another runtime, register the fd again there
/// (`into_inner`, then [`AsyncFd::new`]). Polled through a combinator's
/// waker inside a task of its own runtime, while that runtime runs, a wait
/// waits as usual.
///
/// # Errors
/// A wait ([`readable`](Self::readable), [`writable`](Self::writable), the
/// `poll_*_ready` methods) fails at once, as above, when a task of another
/// runtime awaits it, and also when another executor
/// (`futures::executor::block_on`, a waker that is no runtime task's) does
/// while no runtime of the thread runs `block_on`: nothing would run the
/// fd's loop while that executor waits. The error says which; readiness
/// already seen is still given. A single such poll (`now_or_never`) fails
/// so too, and so does an executor of one's own that drives the loop with
/// [`Handle::run_once`](crate::Handle::run_once) outside `block_on`: watch
/// the fd with [`Handle::add_fd`](crate::Handle::add_fd) there.
pub struct AsyncFd<T: AsFd> {
    inner: Option<T>,
    fd: RawFd,
    handle: Handle,
    state: Rc<RefCell<State>>,
}

impl<T: AsFd> AsyncFd<T> {
    /// Registers `inner`'s fd with the current runtime.
    ///
    /// Fails with no runtime on the thread, with `EBADF` for a closed fd,
    /// and with `EPERM` for any regular file or directory: most are always
    /// ready and cannot be waited for, and epoll refuses those with `EPERM`
    /// too. Unlike epoll, this also refuses the few regular files the
    /// kernel can poll, on `/proc` and sysfs (`/proc/self/mounts`, a sysfs
    /// attribute that signals a change with `POLLPRI`/`POLLERR`), which
    /// epoll accepts. Another fd the kernel cannot poll (`/dev/null`, say)
    /// is registered, and its waits fail with `EPERM` once the loop has
    /// seen the kernel end its poll at once, again and again.
    pub fn new(inner: T) -> io::Result<AsyncFd<T>> {
        Self::with_mode(inner, true)
    }

    /// Registers with a chosen readiness mechanism: `multishot` (the
    /// default) or the reactor's level-triggered, re-armed one-shot watches.
    /// For benchmarks and tests.
    #[doc(hidden)]
    pub fn with_mode(inner: T, multishot: bool) -> io::Result<AsyncFd<T>> {
        let handle = rt::current_handle().ok_or_else(crate::op::no_runtime)?;
        let fd = inner.as_fd().as_raw_fd();
        refuse_unpollable(fd)?;
        let state = Rc::new(RefCell::new(State {
            ready: Ready::EMPTY,
            tick: 0,
            readers: Waiters::default(),
            writers: Waiters::default(),
            error: None,
            source: Source::Multishot(None),
            closing: false,
            checked: None,
        }));
        if multishot {
            arm_multishot(&handle, fd, &state)?;
        } else {
            let st = state.clone();
            // SAFETY: `inner` keeps the fd open until `drop`/`into_inner`
            // removes the watch.
            let id = unsafe {
                handle.add_raw_fd(fd, Interest::NONE, move |h, ev: FdEvent| {
                    on_watch_event(h, ev, &st)
                })
            }?;
            state.borrow_mut().source = Source::Watch(id);
        }
        Ok(AsyncFd {
            inner: Some(inner),
            fd,
            handle,
            state,
        })
    }

    /// The wrapped value.
    pub fn get_ref(&self) -> &T {
        self.inner
            .as_ref()
            .expect("AsyncFd holds its value until dropped")
    }

    /// The wrapped value, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner
            .as_mut()
            .expect("AsyncFd holds its value until dropped")
    }

    /// Stops watching and returns the value, fd still open.
    pub fn into_inner(mut self) -> T {
        self.deregister();
        self.inner
            .take()
            .expect("AsyncFd holds its value until dropped")
    }

    /// Waits until the fd is readable (or its read side closed, or an error
    /// is pending). Fails if the fd cannot be polled (closed, not pollable).
    ///
    /// # Errors
    /// Also awaited by a task of another runtime, or by another executor
    /// while no runtime runs (see [`AsyncFd`]).
    pub async fn readable(&self) -> io::Result<AsyncFdReadyGuard<'_, T>> {
        self.ready(Dir::Read).await
    }

    /// Waits until the fd is writable (or hung up, or an error is pending).
    ///
    /// # Errors
    /// Also awaited by a task of another runtime, or by another executor
    /// while no runtime runs (see [`AsyncFd`]).
    pub async fn writable(&self) -> io::Result<AsyncFdReadyGuard<'_, T>> {
        self.ready(Dir::Write).await
    }

    /// Polls for read readiness (for `AsyncRead`-style implementations).
    ///
    /// Each task that gets `Pending` is woken when the fd becomes readable:
    /// its waker stays until then, as no future's drop can take it out (a
    /// wait that may be given up is better made with
    /// [`readable`](Self::readable)).
    ///
    /// # Errors
    /// Also polled by a task of another runtime, or by another executor
    /// while no runtime runs (see [`AsyncFd`]).
    pub fn poll_read_ready(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<AsyncFdReadyGuard<'_, T>>> {
        self.poll_ready(Dir::Read, cx)
    }

    /// Polls for write readiness (see [`poll_read_ready`](Self::poll_read_ready)).
    ///
    /// # Errors
    /// Also polled by a task of another runtime, or by another executor
    /// while no runtime runs (see [`AsyncFd`]).
    pub fn poll_write_ready(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<AsyncFdReadyGuard<'_, T>>> {
        self.poll_ready(Dir::Write, cx)
    }

    async fn ready(&self, dir: Dir) -> io::Result<AsyncFdReadyGuard<'_, T>> {
        Wait {
            fd: self,
            dir,
            slot: None,
        }
        .await
    }

    /// Polls for readiness in `dir` for a `poll_*_ready` call.
    fn poll_ready(
        &self,
        dir: Dir,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<AsyncFdReadyGuard<'_, T>>> {
        self.poll_ready_in(dir, None, cx)
    }

    /// Polls for readiness in `dir`; `slot` is the wait future's, `None`
    /// for a `poll_*_ready` call.
    fn poll_ready_in(
        &self,
        dir: Dir,
        slot: Option<&mut Option<Slot>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<AsyncFdReadyGuard<'_, T>>> {
        let watch = {
            let mut st = self.state.borrow_mut();
            if let Some(errno) = st.error {
                return Poll::Ready(Err(poll_error(errno, &self.handle)));
            }
            if st.ready.intersects(dir.ready() | Ready::ERROR) {
                return Poll::Ready(Ok(AsyncFdReadyGuard {
                    fd: self,
                    dir,
                    ready: st.ready,
                    tick: st.tick,
                }));
            }
            if !st.checked.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                // Readiness reaches the fd's own loop: a task of another
                // runtime, while that loop lives, or another executor while
                // no runtime runs, would wait for ever, as nothing runs it.
                // (A task never leaves its runtime, so one check per waker
                // is enough.)
                let err = match rt::polled_by_live(&self.handle, cx.waker()) {
                    rt::PolledBy::ItsRuntime => None,
                    rt::PolledBy::Another(_) => Some(
                        "the AsyncFd is registered with another runtime's loop, \
                         which does not run this wait; await it on that runtime",
                    ),
                    rt::PolledBy::NoRuntime => Some(
                        "no ringloop runtime runs this wait: the AsyncFd is registered with a \
                         runtime's loop, and another executor awaits it while no runtime of \
                         this thread runs block_on, so nothing would wake it; await it inside \
                         that runtime's Runtime::block_on or one of its tasks",
                    ),
                };
                if let Some(err) = err {
                    // A future polled here before (the one way its slot
                    // can be live as it completes) leaves.
                    if let Some(s) = slot.and_then(Option::take) {
                        st.waiters(dir).remove(s);
                    }
                    return Poll::Ready(Err(io::Error::other(err)));
                }
                st.checked = Some(cx.waker().clone());
            }
            let waiters = st.waiters(dir);
            match slot {
                Some(slot) => waiters.register(slot, cx.waker()),
                None => waiters.register_polled(cx.waker()),
            }
            match st.source {
                Source::Watch(id) => Some((id, wanted(&st))),
                Source::Multishot(_) => None,
            }
        };
        if let Some((id, interest)) = watch
            && let Err(e) = self.handle.set_interest(id, interest)
        {
            return Poll::Ready(Err(e.into()));
        }
        Poll::Pending
    }

    /// The current round of `dir`'s waiters (for a debug check).
    fn round(&self, dir: Dir) -> u64 {
        self.state.borrow_mut().waiters(dir).round
    }

    /// Takes the waker in `slot` out of `dir`'s waiters (its wait was
    /// dropped unfinished). A watch no one waits on any more stops polling.
    fn leave(&self, dir: Dir, slot: Slot) {
        let watch = {
            let mut st = self.state.borrow_mut();
            let waiters = st.waiters(dir);
            let last = waiters.remove(slot) && !waiters.is_waiting();
            match st.source {
                Source::Watch(id) if last => Some((id, wanted(&st))),
                _ => None,
            }
        };
        if let Some((id, interest)) = watch {
            // Failing (the loop gone, or busy: a drop inside its handler),
            // the interest stays and the next event drops it.
            let _ = self.handle.set_interest(id, interest);
        }
    }

    /// Clears the bits `bits` of the readiness, unless a wake-up arrived
    /// after `tick`.
    fn clear(&self, bits: Ready, tick: u32) {
        let mut st = self.state.borrow_mut();
        if st.tick == tick {
            st.ready = Ready(st.ready.0 & !bits.0);
        }
    }

    fn deregister(&mut self) {
        let source = {
            let mut st = self.state.borrow_mut();
            st.closing = true;
            st.source
        };
        match source {
            Source::Multishot(Some(op)) => {
                // The poll holds a reference to the file: cancel it in the
                // kernel now, so closing the fd right after this makes the
                // peer see EOF at once (SEMANTICS.md §3).
                let _ = self.handle.stop_readiness(op);
            }
            Source::Multishot(None) => {}
            Source::Watch(id) => {
                let _ = self.handle.remove_fd(id);
            }
        }
    }
}

/// Regular files and directories are, as a rule, always "ready" and cannot
/// be waited for: `EPERM`, the error epoll gives for them. (A multishot
/// poll of one ends as soon as it is armed, over and over; other fds the
/// kernel cannot poll are caught by the loop, which ends such a poll with
/// the same error.) The file type alone decides, so the few pollable
/// regular files of `/proc` and sysfs, which epoll accepts, are refused
/// too (they signal a change with `POLLPRI`/`POLLERR` and are readable
/// all along: not the readiness `AsyncFd` waits for).
fn refuse_unpollable(fd: RawFd) -> io::Result<()> {
    // SAFETY: `stat` is plain data that `fstat` fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; a bad fd is an error, not UB.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFDIR => Err(io::Error::from_raw_os_error(libc::EPERM)),
        _ => Ok(()),
    }
}

/// The error of a wait on an fd whose poll ended for good. The loop's
/// teardown ends it with `ECANCELED`, which alone does not say that the
/// runtime is gone.
fn poll_error(errno: i32, handle: &Handle) -> io::Error {
    if errno == libc::ECANCELED && !handle.is_alive() {
        io::Error::other(
            "the AsyncFd's runtime is gone: dropping its loop ended the fd's poll; \
             register the fd again (AsyncFd::into_inner, then AsyncFd::new) on a live runtime",
        )
    } else {
        io::Error::from_raw_os_error(errno)
    }
}

/// The reactor interest a watch-mode fd needs now.
fn wanted(st: &State) -> Interest {
    let mut i = Interest::NONE;
    if st.readers.is_waiting() {
        i |= Interest::READ;
    }
    if st.writers.is_waiting() {
        i |= Interest::WRITE;
    }
    if !i.is_empty() {
        // So a WRITE-only wait hears about errors and hang-ups.
        i |= Interest::ERROR;
    }
    i
}

fn on_watch_event(h: &Handle, ev: FdEvent, state: &Rc<RefCell<State>>) {
    let (wake, interest) = {
        let mut st = state.borrow_mut();
        let mut r = Ready::EMPTY;
        if ev.ready.contains(Interest::READ) {
            r = r | Ready::READABLE;
        }
        if ev.ready.contains(Interest::WRITE) {
            r = r | Ready::WRITABLE;
        }
        if ev.ready.contains(Interest::ERROR) {
            // The reactor reports error and hang-up alike; a hang-up is the
            // usual case and must stay visible, so treat it as one.
            r = r | Ready::ERROR | Ready::READ_CLOSED;
        }
        let mut wake = Vec::new();
        st.on_ready(r, &mut |w| wake.push(w));
        (wake, wanted(&st))
    };
    let _ = h.set_interest(ev.id, interest);
    wake.into_iter().for_each(Waker::wake);
}

fn arm_multishot(handle: &Handle, fd: RawFd, state: &Rc<RefCell<State>>) -> io::Result<()> {
    let mask = (libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP) as u32;
    let id = handle.submit_readiness(fd, mask, state.clone())?;
    state.borrow_mut().source = Source::Multishot(Some(id));
    Ok(())
}

/// The loop hands the multishot poll's completions straight to the fd's
/// state as it reaps them, so a readiness change wakes the waiting task
/// without a callback iteration of its own.
impl ReadinessSink for RefCell<State> {
    fn on_ready(&self, revents: u32, wake: &mut dyn FnMut(Waker)) {
        let mut st = self.borrow_mut();
        if !st.closing {
            st.on_ready(Ready::from_revents(revents), wake);
        }
    }

    fn on_failed(&self, errno: i32, wake: &mut dyn FnMut(Waker)) {
        let mut st = self.borrow_mut();
        st.source = Source::Multishot(None);
        if !st.closing {
            st.fail(errno, wake);
        }
    }
}

impl<T: AsFd> Drop for AsyncFd<T> {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.deregister();
        }
    }
}

impl<T: AsFd> AsFd for AsyncFd<T> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.get_ref().as_fd()
    }
}

impl<T: AsFd> fmt::Debug for AsyncFd<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncFd")
            .field("fd", &self.fd)
            .field("ready", &self.state.borrow().ready)
            .finish()
    }
}

/// The wait of [`AsyncFd::readable`] and [`AsyncFd::writable`]. Dropped
/// before its readiness arrives, it takes its waker out of the fd's
/// waiters.
struct Wait<'a, T: AsFd> {
    fd: &'a AsyncFd<T>,
    dir: Dir,
    /// Where its waker is, once polled.
    slot: Option<Slot>,
}

impl<'a, T: AsFd> Future for Wait<'a, T> {
    type Output = io::Result<AsyncFdReadyGuard<'a, T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let r = this.fd.poll_ready_in(this.dir, Some(&mut this.slot), cx);
        if r.is_ready() {
            // Readiness in its direction (or a failure) came by `take_all`,
            // which woke and forgot every waker there: the slot is stale,
            // and the drop need not look.
            debug_assert!(this.slot.is_none_or(|s| s.round != this.fd.round(this.dir)));
            this.slot = None;
        }
        r
    }
}

impl<T: AsFd> Drop for Wait<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.fd.leave(self.dir, slot);
        }
    }
}

/// Readiness of an [`AsyncFd`] in one direction, as returned by
/// [`AsyncFd::readable`] and [`AsyncFd::writable`].
pub struct AsyncFdReadyGuard<'a, T: AsFd> {
    fd: &'a AsyncFd<T>,
    dir: Dir,
    ready: Ready,
    /// The fd's wake-up count when the guard was made.
    tick: u32,
}

/// Returned by [`AsyncFdReadyGuard::try_io`] when the operation would block;
/// readiness has been cleared.
#[derive(Debug)]
pub struct TryIoError(());

impl fmt::Display for TryIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("operation would block; readiness cleared")
    }
}

impl std::error::Error for TryIoError {}

impl<'a, T: AsFd> AsyncFdReadyGuard<'a, T> {
    /// What was ready when the guard was made.
    pub fn ready(&self) -> Ready {
        self.ready
    }

    /// Forgets this direction's readiness, so the next wait waits for a new
    /// wake-up. Closed sides stay ready. A wake-up that arrived after the
    /// guard was made (while it was held across an await, say) is kept:
    /// the next wait returns at once, and the caller tries again.
    pub fn clear_ready(&mut self) {
        self.fd.clear(self.dir.clearable(), self.tick);
    }

    /// Keeps the readiness (the default when the guard is dropped).
    pub fn retain_ready(&mut self) {}

    /// The wrapped value.
    pub fn get_inner(&self) -> &'a T {
        self.fd.get_ref()
    }

    /// Runs `f`; if it fails with `WouldBlock`, clears readiness and returns
    /// `Err(TryIoError)` so the caller waits again. Any other result is
    /// returned as `Ok(result)`. Unlike [`clear_ready`](Self::clear_ready),
    /// this also clears a closed side: an operation that would block shows
    /// that it is open (again), and the poll reports the next hang-up.
    pub fn try_io<R>(
        &mut self,
        f: impl FnOnce(&'a T) -> io::Result<R>,
    ) -> Result<io::Result<R>, TryIoError> {
        match f(self.fd.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.fd.clear(self.dir.cleared_by_would_block(), self.tick);
                Err(TryIoError(()))
            }
            r => Ok(r),
        }
    }
}

impl<T: AsFd> fmt::Debug for AsyncFdReadyGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncFdReadyGuard")
            .field("dir", &self.dir)
            .field("ready", &self.ready)
            .finish()
    }
}
