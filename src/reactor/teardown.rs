//! Dropping a loop: every event is removed, owned fds are closed after
//! their polls are cancelled, and the kernel is given back every buffer
//! before anything is freed.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use io_uring::cqueue;
use slotmap::Key;

use super::{FdId, Handle, Interest, Op, OpId, Ready};
use crate::sys;

/// Runs user code during teardown, keeping its panic in `panicked` for the
/// end: the rest of the teardown must still run, for it keeps the kernel
/// from writing into freed buffers.
fn teardown_step(panicked: &mut Option<Box<dyn std::any::Any + Send>>, step: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(step)) {
        panicked.get_or_insert(panic);
    }
}

impl Handle {
    /// Tears the loop down; see [`EventLoop`](super::EventLoop)'s docs.
    pub(super) fn teardown(&self) {
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
