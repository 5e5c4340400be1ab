//! Executor: block_on, spawn, join handles, abort, panics, yield, wakers.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ringloop::rt::{self, JoinHandle, Runtime};
use ringloop::time;

#[test]
fn block_on_returns_output() {
    assert_eq!(rt::block_on(async { 7 }), 7);
    let rt = Runtime::new().unwrap();
    assert_eq!(rt.block_on(async { "x" }), "x");
    // The runtime is reusable.
    assert_eq!(rt.block_on(async { 8 }), 8);
}

#[test]
fn spawn_and_join_non_send_tasks() {
    let rt = Runtime::new().unwrap();
    let shared = Rc::new(Cell::new(0));
    let s = shared.clone();
    let out = rt.block_on(async move {
        let handles: Vec<JoinHandle<u32>> = (0..10u32)
            .map(|i| {
                let s = s.clone();
                rt::spawn(async move {
                    rt::yield_now().await;
                    s.set(s.get() + 1);
                    i * 2
                })
            })
            .collect();
        let mut sum = 0;
        for h in handles {
            sum += h.await.unwrap();
        }
        sum
    });
    assert_eq!(out, 90);
    assert_eq!(shared.get(), 10);
    assert_eq!(rt.task_count(), 0);
}

#[test]
fn runtime_spawn_runs_during_block_on() {
    let rt = Runtime::new().unwrap();
    let h = rt.spawn(async { 5 });
    assert_eq!(rt.block_on(h).unwrap(), 5);
}

#[test]
fn panics_surface_through_the_handle() {
    rt::block_on(async {
        let h = rt::spawn(async {
            if true {
                panic!("boom");
            }
            1
        });
        let err = h.await.unwrap_err();
        assert!(err.is_panic());
        assert!(!err.is_cancelled());
        assert!(err.to_string().contains("boom"), "{err}");
        let payload = err.into_panic();
        assert_eq!(*payload.downcast::<&str>().unwrap(), "boom");
        // The loop survives.
        assert_eq!(rt::spawn(async { 3 }).await.unwrap(), 3);
    });
}

/// Sets its flag when dropped.
struct DropFlag(Rc<Cell<bool>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

#[test]
fn abort_cancels_and_drops_the_task() {
    rt::block_on(async {
        let dropped = Rc::new(Cell::new(false));
        let flag = DropFlag(dropped.clone());
        let h = rt::spawn(async move {
            let _flag = flag;
            time::sleep(Duration::from_secs(3600)).await;
        });
        rt::yield_now().await;
        h.abort();
        assert!(dropped.get(), "aborting an idle task drops it at once");
        let err = h.await.unwrap_err();
        assert!(err.is_cancelled());
        assert!(!err.is_panic());
    });
}

#[test]
fn abort_of_a_finished_task_keeps_its_output() {
    rt::block_on(async {
        let h = rt::spawn(async { 1 });
        while !h.is_finished() {
            rt::yield_now().await;
        }
        h.abort();
        assert_eq!(h.await.unwrap(), 1);
    });
}

/// A task that aborts itself is dropped as that poll returns: it is not
/// polled again although it woke itself, and its handle reads finished.
#[test]
fn a_task_that_aborts_itself_is_dropped_as_its_poll_returns() {
    let runtime = Runtime::new().unwrap();
    let dropped = Rc::new(Cell::new(false));
    let polls = Rc::new(Cell::new(0));
    let finished_at_abort = Rc::new(Cell::new(false));
    let own: Rc<RefCell<Option<JoinHandle<()>>>> = Rc::default();
    let (flag, p, f, o) = (
        DropFlag(dropped.clone()),
        polls.clone(),
        finished_at_abort.clone(),
        own.clone(),
    );
    let h = runtime.spawn(async move {
        let _flag = flag;
        loop {
            p.set(p.get() + 1);
            if p.get() == 2
                && let Some(h) = o.borrow().as_ref()
            {
                h.abort();
                f.set(h.is_finished());
            }
            rt::yield_now().await;
        }
    });
    *own.borrow_mut() = Some(h);
    runtime.block_on(async {
        for _ in 0..10 {
            rt::yield_now().await;
        }
    });
    assert_eq!(polls.get(), 2, "not polled after aborting itself");
    assert!(dropped.get(), "its future was dropped");
    assert!(finished_at_abort.get(), "the handle read finished at once");
    assert_eq!(runtime.task_count(), 0);
    let h = own.borrow_mut().take().unwrap();
    assert!(runtime.block_on(h).unwrap_err().is_cancelled());
    assert_eq!(runtime.block_on(runtime.spawn(async { 4 })).unwrap(), 4);
}

/// A task that aborts itself and then finishes in the same poll (or
/// panics) is dropped as that poll returns, like one that stays pending.
/// Its future was kept: its captures lived on until the handle was dropped,
/// and for ever when the handle was among them (a `poll_fn` that holds its
/// own handle), the runtime's drop included.
#[test]
fn a_task_that_aborts_itself_and_finishes_is_dropped_at_once() {
    for panics in [false, true] {
        let runtime = Runtime::new().unwrap();
        let dropped = Rc::new(Cell::new(false));
        let own: Rc<RefCell<Option<JoinHandle<()>>>> = Rc::default();
        let (flag, o) = (DropFlag(dropped.clone()), own.clone());
        let h = runtime.spawn(std::future::poll_fn(move |_| {
            let _ = &flag;
            if let Some(h) = o.borrow().as_ref() {
                h.abort();
            }
            assert!(!panics, "the task panics after aborting itself");
            Poll::Ready(())
        }));
        *own.borrow_mut() = Some(h);
        runtime.block_on(rt::yield_now());
        assert!(dropped.get(), "its future was dropped (panics: {panics})");
        assert_eq!(runtime.task_count(), 0);
        let h = own.borrow_mut().take().unwrap();
        assert!(runtime.block_on(h).unwrap_err().is_cancelled());
    }
}

/// A second runtime that is alive but not running (made inside a task)
/// does not become the current one: spawns, sleeps and timeouts keep going
/// to the runtime whose `block_on` runs (they went to the idle one and hung,
/// timeouts included). Found by an audit probe.
#[test]
fn an_idle_second_runtime_does_not_take_the_running_ones_work() {
    let outer = Runtime::new().unwrap();
    let out = outer.block_on(async {
        let idle = Runtime::new().unwrap();
        let h = rt::spawn(async { 42 });
        assert_eq!(idle.task_count(), 0, "spawned on the idle runtime");
        let slept = time::timeout(Duration::from_secs(20), async {
            time::sleep(Duration::from_millis(1)).await;
            h.await.unwrap()
        })
        .await;
        drop(idle);
        slept.expect("the sleep and the task ran on the running runtime")
    });
    assert_eq!(out, 42);
    // With no runtime running, the newest live one is still current.
    let newer = Runtime::new().unwrap();
    let h = rt::spawn(async { 1 });
    assert_eq!((newer.task_count(), outer.task_count()), (1, 0));
    assert_eq!(newer.block_on(h).unwrap(), 1);
}

#[test]
fn spawn_without_runtime_errors() {
    let h = rt::spawn(async { 1 });
    assert!(h.is_finished());
    let rt = Runtime::new().unwrap();
    drop(rt);
    let h2 = rt::spawn(async { 2 });
    // Await them on a fresh runtime: they resolve, no hang, no panic.
    let (a, b) = Runtime::new()
        .unwrap()
        .block_on(async { (h.await, h2.await) });
    assert!(a.unwrap_err().is_no_runtime());
    assert!(b.unwrap_err().is_cancelled());
    assert!(rt::current_handle().is_none());
}

#[test]
fn dropping_the_runtime_cancels_tasks() {
    let rt = Runtime::new().unwrap();
    let h = rt.spawn(async {
        time::sleep(Duration::from_secs(3600)).await;
        1
    });
    rt.block_on(rt::yield_now());
    drop(rt);
    let r = Runtime::new().unwrap().block_on(h);
    assert!(r.unwrap_err().is_cancelled());
}

#[test]
fn tasks_spawned_from_drop_during_shutdown_are_refused() {
    struct SpawnOnDrop(Rc<RefCell<Option<JoinHandle<()>>>>);
    impl Drop for SpawnOnDrop {
        fn drop(&mut self) {
            *self.0.borrow_mut() = Some(rt::spawn(async {}));
        }
    }
    let slot = Rc::new(RefCell::new(None));
    let rt = Runtime::new().unwrap();
    let guard = SpawnOnDrop(slot.clone());
    rt.spawn(async move {
        let _g = guard;
        std::future::pending::<()>().await;
    });
    rt.block_on(rt::yield_now());
    drop(rt);
    let h = slot.borrow_mut().take().unwrap();
    assert!(h.is_finished());
}

/// Counts polls; completes once `wakes` reaches `need`.
struct CountPolls {
    polls: Rc<Cell<usize>>,
}
impl Future for CountPolls {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polls.set(self.polls.get() + 1);
        if self.polls.get() == 1 {
            // Wake many times before returning: the task must be queued once.
            for _ in 0..100 {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

#[test]
fn repeated_wakes_queue_a_task_once() {
    rt::block_on(async {
        let polls = Rc::new(Cell::new(0));
        rt::spawn(CountPolls {
            polls: polls.clone(),
        })
        .await
        .unwrap();
        assert_eq!(polls.get(), 2);
    });
}

/// Hands its waker to a test thread, then completes when the flag is set.
struct Remote {
    waker: Arc<Mutex<Option<Waker>>>,
    flag: Arc<AtomicUsize>,
}
impl Future for Remote {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.load(Ordering::Acquire) > 0 {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[test]
fn wake_from_another_thread_reaches_a_blocked_loop() {
    let rt = Runtime::with_loop(
        ringloop::EventLoop::builder()
            .wait_timeout(ringloop::WaitTimeout::Forever)
            .build()
            .unwrap(),
    )
    .unwrap();
    for main_future in [true, false] {
        let waker = Arc::new(Mutex::new(None::<Waker>));
        let flag = Arc::new(AtomicUsize::new(0));
        let (w2, f2) = (waker.clone(), flag.clone());
        let thread = std::thread::spawn(move || {
            // Give the loop time to block in io_uring_enter.
            std::thread::sleep(Duration::from_millis(100));
            f2.store(1, Ordering::Release);
            let w = w2.lock().unwrap().take().expect("waker was registered");
            w.wake();
        });
        let start = Instant::now();
        let fut = Remote { waker, flag };
        if main_future {
            rt.block_on(fut);
        } else {
            rt.block_on(async { rt::spawn(fut).await.unwrap() });
        }
        assert!(start.elapsed() < Duration::from_secs(20));
        thread.join().unwrap();
    }
}

#[test]
fn wakers_are_send_sync_and_outlive_the_runtime() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let waker = rt::block_on(std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())));
    assert_send_sync(&waker);
    // The runtime is gone: waking does nothing (no panic).
    waker.wake_by_ref();
    std::thread::spawn(move || waker.wake()).join().unwrap();
}

#[test]
fn many_threads_waking_lose_nothing() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        for round in 0..20 {
            let waker = Arc::new(Mutex::new(None::<Waker>));
            let flag = Arc::new(AtomicUsize::new(0));
            let fut = Remote {
                waker: waker.clone(),
                flag: flag.clone(),
            };
            let h = rt::spawn(fut);
            rt::yield_now().await;
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (w, f) = (waker.clone(), flag.clone());
                    std::thread::spawn(move || {
                        f.fetch_add(1, Ordering::AcqRel);
                        if let Some(w) = w.lock().unwrap().clone() {
                            w.wake();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            time::timeout(Duration::from_secs(20), h)
                .await
                .unwrap_or_else(|_| panic!("round {round}: wake lost"))
                .unwrap();
        }
    });
}

#[test]
fn yield_now_lets_other_tasks_and_io_run() {
    rt::block_on(async {
        let counter = Rc::new(Cell::new(0));
        let c = counter.clone();
        let other = rt::spawn(async move {
            for _ in 0..10 {
                c.set(c.get() + 1);
                rt::yield_now().await;
            }
        });
        // A busy task that only yields must not starve timers.
        let start = Instant::now();
        let sleeper = rt::spawn(time::sleep(Duration::from_millis(20)));
        while !sleeper.is_finished() {
            rt::yield_now().await;
            assert!(start.elapsed() < Duration::from_secs(20));
        }
        other.await.unwrap();
        assert_eq!(counter.get(), 10);
    });
}

#[test]
#[should_panic(expected = "same runtime")]
fn nested_block_on_on_the_same_runtime_panics_clearly() {
    let rt = Rc::new(Runtime::new().unwrap());
    let rt2 = rt.clone();
    rt.block_on(async move { rt2.block_on(async {}) });
}

#[test]
fn block_on_in_a_task_with_a_new_runtime_works() {
    rt::block_on(async {
        let v = rt::spawn(async { rt::block_on(async { rt::spawn(async { 4 }).await.unwrap() }) })
            .await
            .unwrap();
        assert_eq!(v, 4);
        // The outer runtime is current again.
        assert_eq!(rt::spawn(async { 5 }).await.unwrap(), 5);
    });
}

/// Records the thread its value is dropped on. Holds an `Rc`, so it is not
/// `Send`: a task's future or output of this type must be dropped on the
/// runtime's thread.
struct DropsOn {
    thread: Arc<Mutex<Option<std::thread::ThreadId>>>,
    _not_send: Rc<()>,
}

impl DropsOn {
    fn new() -> (DropsOn, Arc<Mutex<Option<std::thread::ThreadId>>>) {
        let thread = Arc::new(Mutex::new(None));
        let v = DropsOn {
            thread: thread.clone(),
            _not_send: Rc::new(()),
        };
        (v, thread)
    }
}

impl Drop for DropsOn {
    fn drop(&mut self) {
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current().id());
    }
}

/// A future that hands its waker out and never finishes.
struct ParkForever(Arc<Mutex<Option<Waker>>>);

impl Future for ParkForever {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        *self.0.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A task's wakers may outlive everything else and be dropped, the last of
/// them, on another thread (the task shares one allocation with them). The
/// task's future and its unclaimed output are not `Send`: both are dropped
/// on the runtime's thread, the output when its handle is dropped, the
/// unfinished future when the runtime is.
#[test]
fn a_tasks_last_waker_on_another_thread_drops_no_future_or_output() {
    let home = std::thread::current().id();
    let rt = Runtime::new().unwrap();
    let (out, out_dropped) = DropsOn::new();
    let (held, future_dropped) = DropsOn::new();
    let finished_waker = Arc::new(Mutex::new(None));
    let parked_waker = Arc::new(Mutex::new(None));
    let (fw, pw) = (finished_waker.clone(), parked_waker.clone());
    let finished = rt.spawn(async move {
        ParkOnce(fw, false).await;
        out
    });
    let parked = rt.spawn(async move {
        let _held = held;
        ParkForever(pw).await;
    });
    rt.block_on(async {
        while !finished.is_finished() {
            rt::yield_now().await;
        }
    });
    // The output was never claimed: dropping the handle drops it, here.
    assert!(out_dropped.lock().unwrap().is_none());
    drop(finished);
    assert_eq!(*out_dropped.lock().unwrap(), Some(home));
    drop(parked);
    drop(rt);
    assert_eq!(*future_dropped.lock().unwrap(), Some(home));
    // The wakers are now the tasks' last owners; they go on another thread.
    let wakers = [
        finished_waker.lock().unwrap().take().unwrap(),
        parked_waker.lock().unwrap().take().unwrap(),
    ];
    std::thread::spawn(move || {
        for w in &wakers {
            w.wake_by_ref();
        }
        drop(wakers);
    })
    .join()
    .unwrap();
    assert_eq!(*out_dropped.lock().unwrap(), Some(home));
    assert_eq!(*future_dropped.lock().unwrap(), Some(home));
}

/// Parks once, handing its waker out and waking itself, then finishes.
struct ParkOnce(Arc<Mutex<Option<Waker>>>, bool);

impl Future for ParkOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.1 {
            return Poll::Ready(());
        }
        self.1 = true;
        *self.0.lock().unwrap() = Some(cx.waker().clone());
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The output of a task whose handle was dropped is dropped as the task
/// finishes, not kept until the runtime goes.
#[test]
fn a_detached_tasks_output_is_dropped_when_it_finishes() {
    let rt = Runtime::new().unwrap();
    let (out, out_dropped) = DropsOn::new();
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    drop(rt.spawn(async move {
        rt::yield_now().await;
        d.set(true);
        out
    }));
    rt.block_on(async {
        while !done.get() {
            rt::yield_now().await;
        }
        rt::yield_now().await;
    });
    assert_eq!(rt.task_count(), 0);
    assert!(out_dropped.lock().unwrap().is_some());
}
