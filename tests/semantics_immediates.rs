//! SEMANTICS.md §5: immediates, also from other threads.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ringloop::{Error, EventLoop, WaitTimeout};

/// Immediates run in FIFO order, one per iteration, before timers.
#[test]
fn fifo_one_per_iteration() {
    let lp = nonblocking_loop();
    let order = log::<usize>();
    let o = order.clone();
    lp.add_timer_asap(move |_| o.borrow_mut().push(100))
        .unwrap();
    for i in 0..5 {
        let o = order.clone();
        lp.add_immediate(move |_| o.borrow_mut().push(i)).unwrap();
    }
    for n in 1..=5 {
        lp.run_once().unwrap();
        assert_eq!(order.borrow().len(), n);
    }
    lp.run_once().unwrap();
    assert_eq!(*order.borrow(), [0, 1, 2, 3, 4, 100]);
    assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
}

/// Scheduling again moves an immediate to the tail; it runs once.
#[test]
fn reschedule_moves_to_tail_and_runs_once() {
    let lp = nonblocking_loop();
    let order = log::<&str>();
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let o = order.clone();
        ids.push(
            lp.add_immediate(move |_| o.borrow_mut().push(name))
                .unwrap(),
        );
    }
    lp.reschedule_immediate(ids[0]).unwrap();
    lp.reschedule_immediate(ids[1]).unwrap();
    lp.reschedule_immediate(ids[0]).unwrap();
    spin(&lp, 10);
    assert_eq!(*order.borrow(), ["c", "b", "a"]);
    // Ran: stale now.
    assert!(matches!(
        lp.reschedule_immediate(ids[0]),
        Err(Error::NotFound)
    ));
    // Many reschedules of one immediate still run it once.
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    let id = lp.add_immediate(move |_| c.set(c.get() + 1)).unwrap();
    for _ in 0..1000 {
        lp.reschedule_immediate(id).unwrap();
    }
    spin(&lp, 10);
    assert_eq!(count.get(), 1);
}

/// A cancelled immediate never runs, also when cancelled from a handler.
#[test]
fn cancel_means_never_runs() {
    let lp = nonblocking_loop();
    let order = log::<&str>();
    let o = order.clone();
    let a = lp.add_immediate(move |_| o.borrow_mut().push("a")).unwrap();
    lp.cancel_immediate(a).unwrap();
    assert!(matches!(lp.cancel_immediate(a), Err(Error::NotFound)));
    let victim = Rc::new(Cell::new(None));
    let (o, v) = (order.clone(), victim.clone());
    lp.add_immediate(move |lp| {
        o.borrow_mut().push("b");
        lp.cancel_immediate(v.take().unwrap()).unwrap();
    })
    .unwrap();
    let o = order.clone();
    victim.set(Some(
        lp.add_immediate(move |_| o.borrow_mut().push("c")).unwrap(),
    ));
    spin(&lp, 10);
    assert_eq!(*order.borrow(), ["b"]);
    assert!(!lp.has_events().unwrap());
}

/// One scheduled from inside a handler runs on a later iteration.
#[test]
fn scheduled_from_handler_runs_later() {
    let lp = nonblocking_loop();
    let order = log::<&str>();
    let o = order.clone();
    lp.add_immediate(move |lp| {
        o.borrow_mut().push("outer");
        let o2 = o.clone();
        lp.add_immediate(move |_| o2.borrow_mut().push("inner"))
            .unwrap();
    })
    .unwrap();
    let o = order.clone();
    lp.add_immediate(move |_| o.borrow_mut().push("second"))
        .unwrap();
    lp.run_once().unwrap();
    assert_eq!(*order.borrow(), ["outer"]);
    lp.run_once().unwrap();
    assert_eq!(*order.borrow(), ["outer", "second"]);
    lp.run_once().unwrap();
    assert_eq!(*order.borrow(), ["outer", "second", "inner"]);
    // Rescheduling itself from its own handler: it already ran, so NotFound.
    let own = Rc::new(Cell::new(None));
    let res = Rc::new(Cell::new(None));
    let (ow, r) = (own.clone(), res.clone());
    own.set(Some(
        lp.add_immediate(move |lp| {
            r.set(Some(matches!(
                lp.reschedule_immediate(ow.get().unwrap()),
                Err(Error::NotFound)
            )))
        })
        .unwrap(),
    ));
    spin(&lp, 5);
    assert_eq!(res.get(), Some(true));
}

/// A Remote schedule wakes a loop blocked forever in io_uring_enter.
#[test]
fn remote_wakes_blocked_loop() {
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Forever)
        .build()
        .unwrap();
    let remote = lp.remote().unwrap();
    let main = std::thread::current().id();
    let ran_on = Arc::new(Mutex::new(None));
    let r = ran_on.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        remote
            .schedule(move |_| *r.lock().unwrap() = Some(std::thread::current().id()))
            .unwrap();
    });
    let start = Instant::now();
    lp.run_once().unwrap();
    if ran_on.lock().unwrap().is_none() {
        lp.run_once().unwrap();
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(took >= Duration::from_millis(40), "did not block: {took:?}");
    assert_eq!(*ran_on.lock().unwrap(), Some(main));
    t.join().unwrap();
    assert!(lp.stats().unwrap().waits >= 1);
}

/// Every schedule wakes a blocked loop, also after earlier ones: the loop
/// never reads its eventfd's counter back, so the multishot poll must post
/// a completion per write whatever the counter holds.
#[test]
fn remote_wakes_blocked_loop_every_time() {
    let lp = loop_with_timeout(Duration::from_secs(5));
    let remote = lp.remote().unwrap();
    let ran = Arc::new(Mutex::new(0));
    for round in 1..=5 {
        let (remote, r) = (remote.clone(), ran.clone());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            remote.schedule(move |_| *r.lock().unwrap() += 1).unwrap();
        });
        let start = Instant::now();
        while *ran.lock().unwrap() < round {
            lp.run_once().unwrap();
            let took = start.elapsed();
            assert!(
                took < Duration::from_secs(4),
                "round {round} woke only at the timeout: {took:?}"
            );
        }
        t.join().unwrap();
    }
}

/// Order from one thread is preserved; many schedules, each runs once.
#[test]
fn remote_order_preserved() {
    let lp = loop_with_timeout(Duration::from_millis(100));
    let remote = lp.remote().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let n = 500;
    let t = std::thread::spawn(move || {
        for i in 0..n {
            let s = s.clone();
            remote.schedule(move |_| s.lock().unwrap().push(i)).unwrap();
        }
    });
    let start = Instant::now();
    while seen.lock().unwrap().len() < n {
        lp.run_once().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    t.join().unwrap();
    assert_eq!(*seen.lock().unwrap(), (0..n).collect::<Vec<_>>());
    // Remote immediates take their place behind local ones already scheduled.
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    lp.add_immediate(move |_| o.lock().unwrap().push("local"))
        .unwrap();
    let o = order.clone();
    lp.remote()
        .unwrap()
        .schedule(move |_| o.lock().unwrap().push("remote"))
        .unwrap();
    lp.run().unwrap();
    assert_eq!(*order.lock().unwrap(), ["local", "remote"]);
}

/// A burst the loop takes from another thread at once still runs one
/// closure per iteration, and what the loop schedules meanwhile goes behind
/// the whole burst (it was scheduled later).
#[test]
fn remote_burst_runs_one_per_iteration() {
    let lp = loop_with_timeout(Duration::from_millis(100));
    let remote = lp.remote().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3 {
        let o = order.clone();
        remote
            .schedule(move |lp| {
                o.lock().unwrap().push(format!("remote {i}"));
                if i == 0 {
                    let o = o.clone();
                    lp.add_immediate(move |_| o.lock().unwrap().push("local".into()))
                        .unwrap();
                }
            })
            .unwrap();
    }
    let want = ["remote 0", "remote 1", "remote 2", "local"];
    for ran in 1..=want.len() {
        lp.run_once().unwrap();
        assert_eq!(*order.lock().unwrap(), want[..ran]);
    }
    assert!(!lp.has_events().unwrap());
}

/// Bursts after the first are gathered in the buffer of one that has run
/// (`Remote::schedule` reuses it): they keep their order, their place
/// behind local immediates scheduled before them, and their place ahead of
/// those scheduled while they run.
#[test]
fn remote_bursts_after_the_first_keep_their_order() {
    const LOCAL_BEFORE: usize = usize::MAX;
    const LOCAL_DURING: usize = usize::MAX - 1;
    let lp = loop_with_timeout(Duration::from_millis(100));
    let remote = lp.remote().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let schedule = |from: usize, to: usize| {
        for i in from..to {
            let o = order.clone();
            remote
                .schedule(move |lp| {
                    o.lock().unwrap().push(i);
                    if i == 100 {
                        let o = o.clone();
                        lp.add_immediate(move |_| o.lock().unwrap().push(LOCAL_DURING))
                            .unwrap();
                    }
                })
                .unwrap();
        }
    };
    schedule(0, 100);
    lp.run().unwrap();
    let o = order.clone();
    lp.add_immediate(move |_| o.lock().unwrap().push(LOCAL_BEFORE))
        .unwrap();
    schedule(100, 110);
    lp.run().unwrap();
    schedule(110, 150);
    lp.run().unwrap();
    let want: Vec<usize> = (0..100)
        .chain([LOCAL_BEFORE])
        .chain(100..110)
        .chain([LOCAL_DURING])
        .chain(110..150)
        .collect();
    assert_eq!(*order.lock().unwrap(), want);
}

/// Several threads scheduling at once: nothing lost.
#[test]
fn remote_from_many_threads_loses_nothing() {
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Forever)
        .build()
        .unwrap();
    let count = Arc::new(Mutex::new(0usize));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let remote = lp.remote().unwrap();
            let c = count.clone();
            std::thread::spawn(move || {
                for _ in 0..250 {
                    let c = c.clone();
                    remote.schedule(move |_| *c.lock().unwrap() += 1).unwrap();
                }
            })
        })
        .collect();
    let start = Instant::now();
    while *count.lock().unwrap() < 1000 {
        lp.run_once().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*count.lock().unwrap(), 1000);
}

/// Remote after the loop is dropped: LoopGone; queued closures are dropped.
#[test]
fn remote_after_drop_is_loop_gone() {
    let lp = nonblocking_loop();
    let remote = lp.remote().unwrap();
    let token = Arc::new(());
    let t = token.clone();
    remote.schedule(move |_| drop(t)).unwrap();
    drop(lp);
    assert_eq!(Arc::strong_count(&token), 1, "queued closure not dropped");
    assert!(matches!(remote.schedule(|_| {}), Err(Error::LoopGone)));
    assert!(matches!(remote.wake(), Err(Error::LoopGone)));
    let r2 = remote.clone();
    std::thread::spawn(move || assert!(matches!(r2.schedule(|_| {}), Err(Error::LoopGone))))
        .join()
        .unwrap();
}

/// traps.md, google/alioth#150: a poll on an eventfd does not consume its
/// counter, so a one-shot poll re-armed without a read completes again at
/// once and the loop spins. After each cross-thread wake-up, an iteration
/// with nothing to do must still block for its whole wait timeout and see
/// no completion (on both ring set-ups).
#[test]
fn after_a_remote_wake_an_idle_iteration_still_blocks() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for plain in [false, true] {
        let lp = EventLoop::builder()
            .plain_setup(plain)
            .wait_timeout(WaitTimeout::After(Duration::from_millis(30)))
            .build()
            .unwrap();
        let remote = lp.remote().unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        for round in 1..=3 {
            let (rm, r) = (remote.clone(), ran.clone());
            std::thread::spawn(move || {
                rm.schedule(move |_| {
                    r.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap()
            })
            .join()
            .unwrap();
            while ran.load(Ordering::SeqCst) < round {
                lp.run_once().unwrap();
            }
            let before = lp.stats().unwrap();
            let start = Instant::now();
            lp.run_once().unwrap();
            let took = start.elapsed();
            let after = lp.stats().unwrap();
            assert!(
                took >= Duration::from_millis(30),
                "plain={plain} round {round}: did not block ({took:?})"
            );
            assert_eq!(
                after.completions, before.completions,
                "plain={plain} round {round}: {before:?} -> {after:?}"
            );
        }
    }
}

/// traps.md, ClickHouse/silk#80: the kernel may end the loop's wake-up poll
/// (a final completion without `F_MORE`, as on CQ overflow). The loop arms
/// it again, so a later cross-thread wake-up still ends a long wait. The
/// end is simulated with an `ASYNC_CANCEL` of the poll, which gives the same
/// final completion.
#[test]
fn wake_doorbell_ended_by_the_kernel_is_rearmed() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let lp = nonblocking_loop();
    let _ = lp.run_once(); // the wake-up poll is in the kernel
    let wake = lp.in_flight_user_data().unwrap();
    assert_eq!(wake.len(), 1, "only the wake-up poll");
    let cancel = io_uring::opcode::AsyncCancel::new(wake[0]).build();
    // SAFETY: ASYNC_CANCEL points at no memory.
    unsafe { lp.submit(cancel, |_, c| assert_eq!(c.result, 0)) }.unwrap();
    spin(&lp, 5);
    assert!(!lp.in_flight_user_data().unwrap().contains(&wake[0]));
    lp.set_wait_timeout(WaitTimeout::After(Duration::from_secs(5)))
        .unwrap();
    let remote = lp.remote().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        remote
            .schedule(move |_| {
                r.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
    });
    let start = Instant::now();
    while ran.load(Ordering::SeqCst) == 0 {
        lp.run_once().unwrap();
        assert!(start.elapsed() < Duration::from_secs(3), "deaf doorbell");
    }
    t.join().unwrap();
}
