//! A panic in user code (a handler, a callback, a waker, a drop) reaches
//! whoever called into the loop, and leaves the loop whole: a caught panic
//! loses no watch, no signal delivery, no operation's end and no wait
//! timeout, and dropping the loop still settles everything the kernel holds.

mod common;

use std::cell::Cell;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::*;
use io_uring::{opcode, types};
use ringloop::rt::{self, Runtime};
use ringloop::{EventLoop, Interest, WaitTimeout};

/// Runs one iteration and says whether it panicked.
fn run_once_panics(lp: &EventLoop) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        let _ = lp.run_once();
    }))
    .is_err()
}

#[test]
fn an_fd_handler_that_panicked_keeps_its_watch() {
    let lp = nonblocking_loop();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let calls = Rc::new(Cell::new(0));
    let seen = calls.clone();
    let id = lp
        .add_fd(a, Interest::READ, move |_, _| {
            seen.set(seen.get() + 1);
            if seen.get() == 1 {
                panic!("first call panics");
            }
        })
        .unwrap();
    let mut panicked = false;
    for _ in 0..10 {
        panicked |= run_once_panics(&lp);
        if calls.get() >= 3 {
            break;
        }
    }
    assert!(panicked);
    // Level-triggered: the byte is still unread, so the handler runs again.
    assert!(calls.get() >= 3, "handler ran {} times", calls.get());
    lp.remove_fd(id).unwrap();
    assert!(!lp.has_events().unwrap());
    lp.run().unwrap();
}

#[test]
fn a_signal_handler_that_panicked_loses_no_delivery_of_its_batch() {
    let lp = nonblocking_loop();
    let usr1 = Rc::new(Cell::new(0u32));
    let usr2 = Rc::new(Cell::new(0u32));
    let (s1, s2) = (usr1.clone(), usr2.clone());
    lp.add_signal(libc::SIGUSR1, move |_, ev| {
        s1.set(s1.get() + ev.count);
        if s1.get() == 1 {
            panic!("first SIGUSR1 panics");
        }
    })
    .unwrap();
    lp.add_signal(libc::SIGUSR2, move |_, ev| s2.set(s2.get() + ev.count))
        .unwrap();
    for round in 1..=2 {
        signal_this_thread(libc::SIGUSR1);
        signal_this_thread(libc::SIGUSR2);
        for _ in 0..20 {
            run_once_panics(&lp);
            if usr1.get() == round && usr2.get() == round {
                break;
            }
        }
        assert_eq!((usr1.get(), usr2.get()), (round, round), "round {round}");
    }
}

#[test]
fn a_multishot_callback_that_panicked_still_gets_its_final_completion() {
    let lp = loop_with_timeout(Duration::from_millis(20));
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    let results = log::<i32>();
    let seen = results.clone();
    let entry = opcode::PollAdd::new(types::Fd(a.as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build();
    // SAFETY: a poll points at no memory; `a` outlives the operation.
    let id = unsafe {
        lp.submit_multishot(entry, move |_, c| {
            seen.borrow_mut().push(c.result);
            if seen.borrow().len() == 1 {
                panic!("first completion panics");
            }
        })
    }
    .unwrap();
    let mut panicked = false;
    for _ in 0..5 {
        panicked |= run_once_panics(&lp);
        if panicked {
            break;
        }
    }
    assert!(panicked);
    lp.cancel_op(id).unwrap();
    let start = Instant::now();
    while lp.has_events().unwrap() && start.elapsed() < Duration::from_secs(5) {
        lp.run_once().unwrap();
    }
    assert!(
        !lp.has_events().unwrap(),
        "the cancelled operation never ended"
    );
    assert_eq!(results.borrow().last(), Some(&-libc::ECANCELED));
}

/// A waker that is not the runtime's: the loop defers it, and it panics.
struct PanickingWaker;

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("foreign waker panics");
    }
}

/// A foreign waker that counts its wakes.
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_waker_that_panicked_does_not_swallow_the_wakes_after_it() {
    let rt = Runtime::new().unwrap();
    let handle = rt.handle();
    // SAFETY: a NOP points at no memory.
    let mut first = unsafe { ringloop::op::submit(opcode::Nop::new().build(), ()) };
    // SAFETY: as above.
    let mut second = unsafe { ringloop::op::submit(opcode::Nop::new().build(), ()) };
    let panicking = Waker::from(Arc::new(PanickingWaker));
    let counting = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let counted = Waker::from(counting.clone());
    // Inside `block_on` (polled at once, no loop turn taken for it): with
    // no runtime running, a waker of its own would be another executor's,
    // and the operation would be cancelled at once.
    let poll = |op: &mut ringloop::op::Op<()>, waker: &Waker| {
        rt.block_on(std::future::poll_fn(|_| {
            Poll::Ready(std::pin::Pin::new(&mut *op).poll(&mut Context::from_waker(waker)))
        }))
    };
    assert!(poll(&mut first, &panicking).is_pending());
    assert!(poll(&mut second, &counted).is_pending());
    let mut panicked = false;
    for _ in 0..20 {
        panicked |= catch_unwind(AssertUnwindSafe(|| {
            let _ = handle.run_once();
        }))
        .is_err();
        if counting.0.load(Ordering::SeqCst) > 0 {
            break;
        }
    }
    assert!(panicked);
    assert_eq!(counting.0.load(Ordering::SeqCst), 1);
    assert!(matches!(poll(&mut second, &counted), Poll::Ready(_)));
    assert!(matches!(poll(&mut first, &counted), Poll::Ready(_)));
}

#[test]
fn a_handler_panic_inside_block_on_leaves_the_wait_timeout_alone() {
    let rt = Runtime::new().unwrap();
    let handle = rt.handle();
    let before = handle.wait_timeout().unwrap();
    assert_ne!(before, WaitTimeout::Never);
    handle
        .add_immediate(|_| panic!("immediate panics"))
        .unwrap();
    // The task keeps itself queued, so block_on's turns do not block.
    let caught = catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async {
            loop {
                rt::yield_now().await;
            }
        })
    }));
    assert!(caught.is_err());
    assert_eq!(handle.wait_timeout().unwrap(), before);
    // An idle sleep blocks in the kernel instead of spinning.
    let start = handle.stats().unwrap().iterations;
    rt.block_on(ringloop::time::sleep(Duration::from_millis(100)));
    let iterations = handle.stats().unwrap().iterations - start;
    assert!(iterations < 1000, "{iterations} iterations for one sleep");
}

#[test]
fn a_wait_timeout_set_during_block_on_stays_set() {
    let rt = Runtime::new().unwrap();
    let handle = rt.handle();
    let wanted = WaitTimeout::After(Duration::from_millis(5));
    let inner = handle.clone();
    rt.block_on(async move {
        inner.set_wait_timeout(wanted).unwrap();
        rt::yield_now().await;
        rt::yield_now().await;
        assert_eq!(inner.wait_timeout().unwrap(), wanted);
    });
    assert_eq!(handle.wait_timeout().unwrap(), wanted);
}

/// Panics when dropped: a handler's captured state with a bad `Drop`.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("drop panics");
    }
}

#[test]
fn a_panic_while_the_loop_is_dropped_still_settles_everything() {
    let lp = nonblocking_loop();
    let (x, _x_peer) = socketpair();
    let bomb = PanicOnDrop;
    lp.add_fd(x, Interest::READ, move |_, _| {
        let _ = &bomb;
    })
    .unwrap();
    let hooks = Rc::new(Cell::new(0));
    let mut peers = Vec::new();
    for _ in 0..3 {
        let (s, peer) = socketpair();
        let id = lp.add_fd(s, Interest::READ, |_, _| {}).unwrap();
        let ran = hooks.clone();
        lp.set_close_hook(id, move |_| ran.set(ran.get() + 1))
            .unwrap();
        peers.push(peer);
    }
    let (r, _w) = socketpair();
    let ended = Rc::new(Cell::new(None));
    let seen = ended.clone();
    let buf = Box::new([0u8; 16]);
    let entry = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_ptr() as *mut u8, 16).build();
    // SAFETY: the buffer moves into the callback, which outlives the read.
    unsafe {
        lp.submit(entry, move |_, c| {
            drop(buf);
            seen.set(Some(c.result));
        })
    }
    .unwrap();
    let caught = catch_unwind(AssertUnwindSafe(|| drop(lp)));
    assert!(caught.is_err(), "the drop's panic is passed on");
    assert_eq!(hooks.get(), 3);
    assert_eq!(ended.get(), Some(-libc::ECANCELED));
    for peer in &peers {
        assert!(peer_closed(peer.as_raw_fd()));
    }
}

#[test]
fn a_waker_that_panicked_in_a_kernel_turn_does_not_drop_the_next_handler() {
    let rt = Runtime::new().unwrap();
    let handle = rt.handle();
    handle.set_wait_timeout(WaitTimeout::Never).unwrap();
    let (a, b) = socketpair();
    write_fd(b.as_raw_fd(), b"x").unwrap();
    // 32 immediates that do not wait: the 33rd iteration takes a kernel
    // turn, which reaps the NOP and runs its panicking waker.
    for _ in 0..32 {
        handle.add_immediate(|_| {}).unwrap();
    }
    let calls = Rc::new(Cell::new(0));
    let seen = calls.clone();
    handle
        .add_fd(a, Interest::READ, move |_, _| seen.set(seen.get() + 1))
        .unwrap();
    // SAFETY: a NOP points at no memory.
    let mut nop = unsafe { ringloop::op::submit(opcode::Nop::new().build(), ()) };
    let panicking = Waker::from(Arc::new(PanickingWaker));
    // Inside `block_on`, as in the test above.
    assert!(
        rt.block_on(std::future::poll_fn(|_| {
            Poll::Ready(std::pin::Pin::new(&mut nop).poll(&mut Context::from_waker(&panicking)))
        }))
        .is_pending()
    );
    let mut panicked = false;
    for _ in 0..100 {
        panicked |= catch_unwind(AssertUnwindSafe(|| {
            let _ = handle.run_once();
        }))
        .is_err();
    }
    assert!(panicked);
    // Level-triggered, the byte unread: the watch keeps firing.
    assert!(calls.get() > 10, "the fd handler ran {} times", calls.get());
}

/// A task's output that panics when dropped.
struct PanicOnDropOutput;

impl Drop for PanicOnDropOutput {
    fn drop(&mut self) {
        panic!("output drop panics");
    }
}

/// A panic in the executor's poll pass (here a detached task's output,
/// dropped as the task finishes) reaches `block_on`'s caller, and the tasks
/// queued behind it in the same pass still run afterwards. They were lost:
/// still marked queued, so no later wake queued them again, and they hung.
#[test]
fn a_panic_in_the_poll_pass_loses_no_queued_task() {
    let rt = Runtime::new().unwrap();
    drop(rt.spawn(async { PanicOnDropOutput }));
    let ran = Rc::new(Cell::new(false));
    let flag = ran.clone();
    let behind = rt.spawn(async move { flag.set(true) });
    let caught = catch_unwind(AssertUnwindSafe(|| rt.block_on(rt::yield_now())));
    assert!(caught.is_err(), "the drop's panic reaches block_on");
    let joined = rt.block_on(ringloop::time::timeout(Duration::from_secs(5), behind));
    joined
        .expect("the task queued behind the panic hung")
        .unwrap();
    assert!(ran.get());
    assert_eq!(rt.task_count(), 0, "the finished task left the table");
}

/// Set in the child process of
/// [`a_task_whose_drop_panics_as_its_runtime_unwinds_does_not_abort`].
const UNWIND_CHILD: &str = "RINGLOOP_PANICS_UNWIND_CHILD";

/// A runtime dropped while a panic unwinds (its `block_on`'s future
/// panicked) drops its tasks; one whose drop panics too does not abort the
/// process ("panic in a destructor during cleanup"): the task drops' panics
/// are held, like the loop's teardown holds those of handlers, and the
/// first goes on only when no panic is unwinding already. Run in a child
/// process, since the failure is an abort.
#[test]
fn a_task_whose_drop_panics_as_its_runtime_unwinds_does_not_abort() {
    if std::env::var_os(UNWIND_CHILD).is_some() {
        let dropped = Rc::new(Cell::new(0));
        let count = dropped.clone();
        let caught = catch_unwind(AssertUnwindSafe(|| {
            rt::block_on(async move {
                drop(rt::spawn(async {
                    let _bad = PanicOnDrop;
                    std::future::pending::<()>().await;
                }));
                let behind = DropCounter(count);
                drop(rt::spawn(async move {
                    let _counted = behind;
                    std::future::pending::<()>().await;
                }));
                rt::yield_now().await;
                panic!("the main future panics");
            })
        }));
        let msg = caught.expect_err("block_on panics");
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"the main future panics"));
        assert_eq!(dropped.get(), 1, "the task after the bad one was dropped");
        // Without a panic unwinding, the drop's panic reaches the caller.
        let runtime = Runtime::new().unwrap();
        drop(runtime.spawn(async {
            let _bad = PanicOnDrop;
            std::future::pending::<()>().await;
        }));
        runtime.block_on(rt::yield_now());
        let caught = catch_unwind(AssertUnwindSafe(|| drop(runtime)));
        let msg = caught.expect_err("the runtime's drop panics");
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"drop panics"));
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let test = "a_task_whose_drop_panics_as_its_runtime_unwinds_does_not_abort";
    let out = std::process::Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(UNWIND_CHILD, "1")
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child failed ({}):\n{log}",
        out.status
    );
    assert!(log.contains("1 passed"), "the child ran no test:\n{log}");
}

/// Counts its drops.
struct DropCounter(Rc<Cell<usize>>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}
