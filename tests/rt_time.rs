//! Timers for futures: never early, zero and MAX durations, intervals.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_core::Stream;
use ringloop::rt;
use ringloop::time::{self, Elapsed};

#[test]
fn sleep_is_never_early() {
    rt::block_on(async {
        for ms in [0u64, 1, 5, 20] {
            let d = Duration::from_millis(ms);
            let start = Instant::now();
            time::sleep(d).await;
            assert!(start.elapsed() >= d, "{ms} ms sleep woke early");
        }
        let deadline = Instant::now() + Duration::from_millis(10);
        time::sleep_until(deadline).await;
        assert!(Instant::now() >= deadline);
        // A deadline in the past completes.
        time::sleep_until(Instant::now() - Duration::from_millis(5)).await;
    });
}

#[test]
fn many_sleeps_in_tasks_complete_in_order_of_deadline() {
    rt::block_on(async {
        let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let handles: Vec<_> = [30u64, 10, 20, 0]
            .into_iter()
            .map(|ms| {
                let order = order.clone();
                rt::spawn(async move {
                    time::sleep(Duration::from_millis(ms)).await;
                    order.borrow_mut().push(ms);
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(*order.borrow(), vec![0, 10, 20, 30]);
    });
}

#[test]
fn timeout_zero_and_max() {
    rt::block_on(async {
        // Ready futures win, even with a zero timeout.
        assert_eq!(time::timeout(Duration::ZERO, async { 1 }).await, Ok(1));
        // A pending future with zero timeout elapses (soon, not never).
        let start = Instant::now();
        let r = time::timeout(Duration::ZERO, std::future::pending::<()>()).await;
        assert_eq!(r, Err(Elapsed::from_test()));
        assert!(start.elapsed() < Duration::from_secs(10));
        // MAX never elapses and does not panic.
        assert_eq!(time::timeout(Duration::MAX, async { 2 }).await, Ok(2));
        let r = time::timeout(
            Duration::from_millis(20),
            time::timeout(Duration::MAX, std::future::pending::<()>()),
        )
        .await;
        assert!(
            r.is_err(),
            "the outer timeout fires; the MAX one never does"
        );
        // A MAX sleep is simply pending.
        let r = time::timeout(Duration::from_millis(10), time::sleep(Duration::MAX)).await;
        assert!(r.is_err());
        let io: std::io::Error = Elapsed::from_test().into();
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    });
}

trait FromTest {
    fn from_test() -> Self;
}
impl FromTest for Elapsed {
    fn from_test() -> Self {
        rt::block_on(time::timeout(Duration::ZERO, std::future::pending::<()>())).unwrap_err()
    }
}

#[test]
fn timeout_drops_the_future_and_cancels_its_timer() {
    let runtime = rt::Runtime::new().unwrap();
    let handle = runtime.handle();
    runtime.block_on(async {
        for _ in 0..100 {
            let _ = time::timeout(Duration::from_secs(3600), async {}).await;
        }
        // No timers left pending in the loop.
        assert!(!handle.has_events().unwrap());
    });
}

#[test]
fn interval_ticks_a_period_apart_and_is_a_stream() {
    rt::block_on(async {
        let period = Duration::from_millis(10);
        let mut iv = time::interval(period);
        let first = iv.tick().await;
        let mut last = first;
        for _ in 0..3 {
            let t = iv.tick().await;
            assert!(t >= last + period, "tick too close to the previous one");
            assert!(Instant::now() >= t, "tick delivered before its deadline");
            last = t;
        }
        // As a Stream.
        let mut iv = time::interval(period);
        let mut pinned = Pin::new(&mut iv);
        let a = std::future::poll_fn(|cx| pinned.as_mut().poll_next(cx))
            .await
            .unwrap();
        let b = std::future::poll_fn(|cx| pinned.as_mut().poll_next(cx))
            .await
            .unwrap();
        assert!(b >= a + period);
        // A zero period does not panic or hang.
        let mut fast = time::interval(Duration::ZERO);
        fast.tick().await;
        fast.tick().await;
    });
}

#[test]
fn manual_clock_drives_sleeps() {
    let (clock, runtime) = manual_runtime();
    let task = runtime.spawn(time::sleep(Duration::from_secs(60)));
    // Poll a few rounds without advancing: the sleep must not complete.
    struct Rounds(u32);
    impl Future for Rounds {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 == 0 {
                return Poll::Ready(());
            }
            self.0 -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    runtime.block_on(Rounds(10));
    assert!(!task.is_finished());
    clock.advance(Duration::from_secs(60));
    runtime.block_on(task).unwrap();
}

#[test]
#[should_panic(expected = "outside a ringloop runtime")]
fn sleep_without_runtime_panics_with_a_clear_message() {
    let mut s = time::sleep(Duration::from_millis(1));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let _ = Pin::new(&mut s).poll(&mut cx);
}

/// A runtime on a manual clock that never blocks, so tests step time.
fn manual_runtime() -> (ringloop::ManualClock, rt::Runtime) {
    let clock = ringloop::ManualClock::new();
    let lp = ringloop::EventLoop::builder()
        .manual_clock(clock.clone())
        .wait_timeout(ringloop::WaitTimeout::Never)
        .build()
        .unwrap();
    (clock, rt::Runtime::with_loop(lp).unwrap())
}

/// Yields `n` times, so `block_on` runs `n` loop iterations in between.
async fn turns(n: usize) {
    for _ in 0..n {
        rt::yield_now().await;
    }
}

#[test]
fn a_burst_of_due_sleeps_wakes_in_one_iteration_without_a_handler() {
    let (clock, runtime) = manual_runtime();
    let handle = runtime.handle();
    let tasks: Vec<_> = (0..50)
        .map(|_| runtime.spawn(time::sleep(Duration::from_secs(10))))
        .collect();
    runtime.block_on(turns(3));
    assert!(tasks.iter().all(|t| !t.is_finished()));
    let before = handle.stats().unwrap();
    clock.advance(Duration::from_secs(10));
    runtime.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let after = handle.stats().unwrap();
    // A sleep wakes its task; it is not a handler (SEMANTICS.md §1 orders
    // handlers, and a wake is not one).
    assert_eq!(after.handlers, before.handlers, "sleeps ran as handlers");
    // Fifty due sleeps take one iteration, not fifty.
    assert!(
        after.iterations - before.iterations < 10,
        "{} iterations for one burst of sleeps",
        after.iterations - before.iterations
    );
}

#[test]
fn sleeps_keep_their_place_among_callback_timers() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let (clock, runtime) = manual_runtime();
    let handle = runtime.handle();
    let order = Rc::new(RefCell::new(Vec::new()));
    let log = |what: &'static str| {
        let order = order.clone();
        move |_: &ringloop::Handle| order.borrow_mut().push(what)
    };
    let at = Duration::from_secs(5);
    handle.add_timer(at, log("timer a")).unwrap();
    let o = order.clone();
    let task = runtime.spawn(async move {
        time::sleep(at).await;
        o.borrow_mut().push("sleep");
    });
    // The sleep's timer is added when the task first runs.
    runtime.block_on(turns(2));
    handle.add_timer(at, log("timer b")).unwrap();
    clock.advance(at);
    runtime.block_on(task).unwrap();
    runtime.block_on(turns(3));
    // Equal deadlines fire in the order they were added (SEMANTICS.md §4).
    assert_eq!(*order.borrow(), ["timer a", "sleep", "timer b"]);
}

#[test]
fn a_fired_sleep_is_elapsed_before_it_is_polled_again() {
    let (clock, runtime) = manual_runtime();
    runtime.block_on(async {
        let mut sleep = std::pin::pin!(time::sleep(Duration::from_secs(1)));
        let first = std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await;
        assert_eq!(first, Poll::Pending);
        assert!(!sleep.is_elapsed());
        clock.advance(Duration::from_secs(1));
        turns(3).await;
        assert!(sleep.is_elapsed(), "the timer fired but the sleep says not");
        sleep.as_mut().await;
        assert!(sleep.is_elapsed());
        // Reset makes it wait again.
        let now = rt::current_handle().unwrap().now().unwrap();
        sleep.as_mut().reset(now + Duration::from_secs(1));
        assert!(!sleep.is_elapsed());
    });
}

/// A task that only ever sleeps until a moment already past keeps a timer
/// due on every iteration, so the loop never has a reason to wait; the
/// operations other tasks submit must still reach the kernel and complete
/// (under QEMU a 40 µs timeout was always due, and no byte ever came).
#[test]
fn sleeps_that_are_always_due_do_not_starve_io() {
    use std::cell::Cell;
    use std::rc::Rc;
    rt::block_on(async {
        let (a, b) = ringloop::net::UnixStream::pair().unwrap();
        let got = Rc::new(Cell::new(0));
        let reader = {
            let got = got.clone();
            rt::spawn(async move {
                let (r, _) = a.read(Vec::with_capacity(8)).await;
                got.set(r.unwrap());
            })
        };
        let writer = rt::spawn(async move { b.write_all(b"ring".to_vec()).await.0.unwrap() });
        let mut turns = 0;
        while got.get() == 0 {
            assert!(turns < 100_000, "no I/O completed in {turns} due sleeps");
            time::sleep_until(Instant::now() - Duration::from_millis(1)).await;
            turns += 1;
        }
        assert_eq!(got.get(), 4);
        reader.await.unwrap();
        writer.await.unwrap();
    });
}

/// A sleep first polled on one runtime and then awaited on another (both
/// alive, on one thread) completes there, never early. It kept its timer
/// in the first loop, which nothing ran while the second one did, and hung.
#[test]
fn a_sleep_moved_to_another_runtime_completes_there() {
    let first = rt::Runtime::new().unwrap();
    let second = rt::Runtime::new().unwrap();
    let start = Instant::now();
    let mut sleep = Box::pin(time::sleep(Duration::from_millis(30)));
    common::poll_once_on(&first, &mut sleep);
    let done = second.block_on(time::timeout(Duration::from_secs(10), sleep.as_mut()));
    done.expect("the sleep hung on the second runtime");
    assert!(start.elapsed() >= Duration::from_millis(30), "early");
    assert!(sleep.is_elapsed());
    // The first loop has no timer left from it.
    assert!(!first.handle().has_events().unwrap());
}

/// A sleep polled again after the runtime it first ran on was dropped
/// moves to the runtime that polls it and completes there, never early;
/// polled with no runtime at all it panics, as documented, instead of
/// staying pending for ever (its timer went with that loop). Found by an
/// audit probe (it panicked on the next runtime too).
#[test]
fn a_sleep_outliving_its_runtime_completes_on_the_next_or_panics_without_one() {
    for next_runtime in [true, false] {
        let first = rt::Runtime::new().unwrap();
        let start = Instant::now();
        let mut sleep = Box::pin(time::sleep(Duration::from_millis(20)));
        common::poll_once_on(&first, &mut sleep);
        drop(first);
        if next_runtime {
            let second = rt::Runtime::new().unwrap();
            let done = second.block_on(time::timeout(Duration::from_secs(20), sleep));
            done.expect("the sleep hung");
            assert!(start.elapsed() >= Duration::from_millis(20), "early");
        } else {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = sleep.as_mut().poll(&mut cx);
            }));
            let err = polled.expect_err("polled with no runtime, it panics");
            let msg = err.downcast_ref::<String>().unwrap();
            assert!(msg.contains("runtime was dropped"), "{msg}");
        }
    }
}
