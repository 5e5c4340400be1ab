//! Signals as a stream, on the loop's signal watches.
//!
//! ```no_run
//! use ringloop::{rt, signal};
//! rt::block_on(async {
//!     let mut hup = signal::signal(libc::SIGHUP).unwrap();
//!     while let Some(count) = hup.recv().await {
//!         println!("SIGHUP x{count}: reloading");
//!     }
//! });
//! ```

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_core::Stream;

use crate::reactor::{Handle, SignalEvent, SignalId};
use crate::rt;

#[derive(Default)]
struct Pending {
    count: u64,
    waker: Option<Waker>,
}

/// Deliveries of one signal, as a [`Stream`] of counts: each item is how many
/// times the signal arrived since the previous item (at least 1).
///
/// While it exists the loop's counting handler is installed for the signal
/// (see [`Handle::add_signal`](crate::Handle::add_signal)); dropping it stops
/// watching, and the last watch of a signal restores its previous
/// disposition. The signal must not be blocked in every thread.
///
/// The watch is on the loop of the runtime the stream was made under.
/// Polled by a task of another runtime of the thread while that loop is
/// alive but idle (it would never dispatch a delivery), the stream moves
/// its watch to the current runtime's loop, keeping the deliveries the old
/// loop had counted and not handed out. Polled through a combinator's
/// waker inside a task of its own runtime, while that runtime runs, it
/// waits as usual.
///
/// # Panics
/// Polled by another executor (`futures::executor::block_on`, a waker that
/// is no runtime task's) while no runtime of the thread runs `block_on`:
/// nothing would run its loop, so it would wait for ever. The stream has
/// no error to return, and that is a bug in the caller (as a `Sleep`
/// polled outside a runtime panics). A single such poll (`now_or_never`)
/// panics too, unless deliveries were already handed to the stream, and
/// so does an executor of one's own that drives the loop with
/// [`Handle::run_once`](crate::Handle::run_once) outside `block_on`: watch
/// the signal with [`Handle::add_signal`](crate::Handle::add_signal) there.
pub struct Signals {
    handle: Handle,
    id: SignalId,
    signo: i32,
    pending: Rc<RefCell<Pending>>,
}

/// Starts watching `signo` on the current runtime's loop.
///
/// Fails for signals that cannot be watched (`SIGKILL`, `SIGSTOP`, out of
/// range), or with no runtime on the thread.
pub fn signal(signo: i32) -> io::Result<Signals> {
    let handle = rt::current_handle().ok_or_else(crate::op::no_runtime)?;
    let pending = Rc::new(RefCell::new(Pending::default()));
    let id = handle.add_signal(signo, on_delivery(pending.clone()))?;
    Ok(Signals {
        handle,
        id,
        signo,
        pending,
    })
}

/// The loop's handler for a stream: counts the deliveries, wakes the reader.
fn on_delivery(p: Rc<RefCell<Pending>>) -> impl FnMut(&Handle, SignalEvent) + 'static {
    move |_, ev| {
        let waker = {
            let mut p = p.borrow_mut();
            p.count = p.count.saturating_add(u64::from(ev.count));
            p.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Signals {
    /// Waits for the next deliveries and returns their count. Never returns
    /// `None` while the loop lives.
    ///
    /// # Panics
    /// Awaited by another executor while no runtime runs (see [`Signals`]).
    pub async fn recv(&mut self) -> Option<u64> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for deliveries.
    ///
    /// # Panics
    /// Polled by another executor while no runtime runs (see [`Signals`]).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<u64>> {
        {
            let mut p = self.pending.borrow_mut();
            if p.count > 0 {
                return Poll::Ready(Some(std::mem::take(&mut p.count)));
            }
            if p.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
        }
        // Checked once per waker (a task never leaves its runtime), not
        // per poll. Only a running loop dispatches deliveries. Polled by a
        // task of another runtime while the watch's loop is idle: the watch
        // moves to that runtime's loop (with what the old one had counted),
        // as a `Sleep` moves its timer. Polled by another executor while no
        // runtime runs: no loop would dispatch one while it waits.
        // (A loop that is gone is left as it was: there is nothing to move.)
        match rt::polled_by_live(&self.handle, cx.waker()) {
            rt::PolledBy::ItsRuntime => {}
            rt::PolledBy::Another(current) => {
                if let Ok((id, count)) =
                    self.handle
                        .move_signal(self.id, &current, on_delivery(self.pending.clone()))
                {
                    self.handle = current;
                    self.id = id;
                    let mut p = self.pending.borrow_mut();
                    p.count = p.count.saturating_add(u64::from(count));
                }
            }
            rt::PolledBy::NoRuntime => panic!(
                "ringloop::signal::Signals polled by another executor while no ringloop \
                 runtime runs on this thread: only its loop dispatches deliveries, and nothing \
                 runs that loop while this executor waits (it would hang); await the stream \
                 inside Runtime::block_on or one of its tasks"
            ),
        }
        let mut p = self.pending.borrow_mut();
        if p.count > 0 {
            return Poll::Ready(Some(std::mem::take(&mut p.count)));
        }
        p.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The signal number.
    pub fn signo(&self) -> i32 {
        self.signo
    }
}

impl Stream for Signals {
    type Item = u64;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u64>> {
        self.get_mut().poll_recv(cx)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let _ = self.handle.remove_signal(self.id);
    }
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals")
            .field("signo", &self.signo)
            .finish()
    }
}
