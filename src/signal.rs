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

use crate::reactor::{Handle, SignalId};
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
    let p = pending.clone();
    let id = handle.add_signal(signo, move |_, ev| {
        let waker = {
            let mut p = p.borrow_mut();
            p.count = p.count.saturating_add(u64::from(ev.count));
            p.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    })?;
    Ok(Signals {
        handle,
        id,
        signo,
        pending,
    })
}

impl Signals {
    /// Waits for the next deliveries and returns their count. Never returns
    /// `None` while the loop lives.
    pub async fn recv(&mut self) -> Option<u64> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for deliveries.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<u64>> {
        let mut p = self.pending.borrow_mut();
        if p.count > 0 {
            return Poll::Ready(Some(std::mem::take(&mut p.count)));
        }
        match &p.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => p.waker = Some(cx.waker().clone()),
        }
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
