//! SEMANTICS.md §6: signals. Real-time signals are sent with tgkill to the
//! loop's own thread, so the test harness's other threads cannot take them.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use ringloop::{Error, EventLoop, SignalEvent, WaitTimeout};

fn rt(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

fn is_blocked(sig: i32) -> bool {
    // SAFETY: sigset_t is plain data; pthread_sigmask fills it in.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
        libc::sigismember(&set, sig) == 1
    }
}

/// Three deliveries of an RT signal before the loop looks: one call, count 3.
#[test]
fn count_coalesces_deliveries() {
    let lp = nonblocking_loop();
    let sig = rt(2);
    let seen = log::<SignalEvent>();
    let s = seen.clone();
    let id = lp
        .add_signal(sig, move |_, ev| s.borrow_mut().push(ev))
        .unwrap();
    for _ in 0..3 {
        signal_this_thread(sig);
    }
    lp.run_once().unwrap();
    assert_eq!(seen.borrow().len(), 1);
    let ev = seen.borrow()[0];
    assert_eq!((ev.id, ev.signo, ev.count), (id, sig, 3));
    assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
    signal_this_thread(sig);
    lp.run_once().unwrap();
    assert_eq!(seen.borrow().len(), 2);
    assert_eq!(seen.borrow()[1].count, 1);
    lp.remove_signal(id).unwrap();
}

/// A signal handler runs before a ready immediate and a due timer, and all
/// pending signal handlers run in the same iteration.
#[test]
fn signals_run_first_all_in_one_iteration() {
    let lp = nonblocking_loop();
    let order = log::<String>();
    let (s1, s2) = (rt(3), rt(4));
    let mut ids = Vec::new();
    for (name, sig) in [("s1", s1), ("s2", s2), ("s1b", s1)] {
        let o = order.clone();
        ids.push(
            lp.add_signal(sig, move |_, ev| {
                o.borrow_mut().push(format!("{name}:{}", ev.count))
            })
            .unwrap(),
        );
    }
    let o = order.clone();
    lp.add_immediate(move |_| o.borrow_mut().push("imm".into()))
        .unwrap();
    let o = order.clone();
    lp.add_timer_asap(move |_| o.borrow_mut().push("timer".into()))
        .unwrap();
    signal_this_thread(s1);
    signal_this_thread(s2);
    lp.run_once().unwrap();
    let mut first: Vec<String> = order.borrow().clone();
    first.sort();
    assert_eq!(first, ["s1:1", "s1b:1", "s2:1"]);
    lp.run_once().unwrap();
    assert_eq!(order.borrow().last().unwrap(), "imm");
    lp.run_once().unwrap();
    assert_eq!(order.borrow().last().unwrap(), "timer");
    for id in ids {
        lp.remove_signal(id).unwrap();
    }
}

/// A signal wakes a loop blocked in io_uring_enter.
#[test]
fn signal_wakes_blocked_loop() {
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::After(Duration::from_secs(10)))
        .build()
        .unwrap();
    let sig = rt(5);
    let got = Rc::new(Cell::new(0));
    let g = got.clone();
    let id = lp.add_signal(sig, move |_, ev| g.set(ev.count)).unwrap();
    let pid = std::process::id() as libc::pid_t;
    let tid = gettid();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: sends a signal to the loop's thread, which blocks it.
        unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
    });
    let start = Instant::now();
    while got.get() == 0 {
        lp.run_once().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(got.get(), 1);
    t.join().unwrap();
    lp.remove_signal(id).unwrap();
}

/// While watched the signal is blocked; remove_signal unblocks it (after
/// discarding pending deliveries, so the default action does not run).
#[test]
fn remove_signal_unblocks() {
    let lp = nonblocking_loop();
    let sig = rt(6);
    assert!(!is_blocked(sig));
    let a = lp
        .add_signal(sig, |_, _| panic!("never delivered"))
        .unwrap();
    let b = lp
        .add_signal(sig, |_, _| panic!("never delivered"))
        .unwrap();
    assert!(is_blocked(sig));
    lp.remove_signal(a).unwrap();
    assert!(is_blocked(sig), "still watched by b");
    // A delivery pending at removal is discarded, not acted on.
    signal_this_thread(sig);
    lp.remove_signal(b).unwrap();
    assert!(!is_blocked(sig));
    assert!(matches!(lp.remove_signal(b), Err(Error::NotFound)));
    assert!(!lp.has_events().unwrap());
    assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
}

/// A signal the thread already blocked stays blocked after removal; dropping
/// the loop unblocks what it blocked.
#[test]
fn unblock_only_what_the_loop_blocked() {
    let (own, theirs) = (rt(7), rt(8));
    // SAFETY: plain data; blocks `theirs` on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, theirs);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let lp = nonblocking_loop();
    let a = lp.add_signal(own, |_, _| {}).unwrap();
    let b = lp.add_signal(theirs, |_, _| {}).unwrap();
    lp.remove_signal(b).unwrap();
    assert!(
        is_blocked(theirs),
        "the loop unblocked a signal it did not block"
    );
    assert!(is_blocked(own));
    let _ = a;
    drop(lp);
    assert!(
        !is_blocked(own),
        "dropping the loop leaves its signal blocked"
    );
    assert!(is_blocked(theirs));
}

/// A signal handler may remove its own watch and others.
#[test]
fn handler_removes_signal_watches() {
    let lp = nonblocking_loop();
    let sig = rt(9);
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let ids = Rc::new(std::cell::RefCell::new(Vec::new()));
    for _ in 0..2 {
        let (c, ids2) = (c.clone(), ids.clone());
        let id = lp
            .add_signal(sig, move |lp, _| {
                c.set(c.get() + 1);
                for id in ids2.borrow_mut().drain(..) {
                    lp.remove_signal(id).unwrap();
                }
            })
            .unwrap();
        ids.borrow_mut().push(id);
    }
    signal_this_thread(sig);
    lp.run_once().unwrap();
    assert_eq!(calls.get(), 1, "a removed watch still ran");
    assert!(!is_blocked(sig));
    assert!(!lp.has_events().unwrap());
}
