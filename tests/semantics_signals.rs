//! SEMANTICS.md §6: signals. Real-time signals are mostly sent with tgkill
//! to the loop's own thread; one test sends a process-directed signal.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use ringloop::{Error, EventLoop, SignalEvent, WaitTimeout};

/// Every loop watching any signal is woken by every delivery (one
/// process-wide eventfd), so a test that counts iterations must not share
/// the process with others sending signals: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _s = serial();
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
    let _s = serial();
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
    let _s = serial();
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

/// The signal's disposition as a handler address (SIG_DFL, SIG_IGN or a function).
fn disposition(sig: i32) -> libc::sighandler_t {
    // SAFETY: plain data; sigaction with a null new action only reads.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old);
        old.sa_sigaction
    }
}

fn set_disposition(sig: i32, handler: libc::sighandler_t) {
    // SAFETY: installs SIG_IGN or SIG_DFL, which need no handler code.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut());
    }
}

/// Watching installs the loop's handler (never blocking the signal);
/// removing the last watch restores what was there before.
#[test]
fn remove_signal_restores_the_previous_disposition() {
    let _s = serial();
    let lp = nonblocking_loop();
    let sig = rt(6);
    set_disposition(sig, libc::SIG_IGN);
    let a = lp.add_signal(sig, |_, _| {}).unwrap();
    let b = lp.add_signal(sig, |_, _| {}).unwrap();
    assert_ne!(
        disposition(sig),
        libc::SIG_IGN,
        "the loop's handler is installed"
    );
    assert!(!is_blocked(sig), "the loop never blocks a watched signal");
    lp.remove_signal(a).unwrap();
    assert_ne!(disposition(sig), libc::SIG_IGN, "still watched by b");
    lp.remove_signal(b).unwrap();
    assert_eq!(disposition(sig), libc::SIG_IGN);
    assert!(matches!(lp.remove_signal(b), Err(Error::NotFound)));
    assert!(!lp.has_events().unwrap());
    assert!(matches!(lp.run_once(), Err(Error::WouldBlock)));
    set_disposition(sig, libc::SIG_DFL);
}

/// Two loops watching one signal both see each delivery; dropping one keeps
/// the handler for the other, dropping both restores the disposition.
#[test]
fn two_loops_share_a_signal_and_drop_restores() {
    let _s = serial();
    let sig = rt(7);
    set_disposition(sig, libc::SIG_IGN);
    let (one, two) = (nonblocking_loop(), nonblocking_loop());
    let seen = Rc::new(Cell::new((0u32, 0u32)));
    let s = seen.clone();
    one.add_signal(sig, move |_, ev| s.set((s.get().0 + ev.count, s.get().1)))
        .unwrap();
    let s = seen.clone();
    two.add_signal(sig, move |_, ev| s.set((s.get().0, s.get().1 + ev.count)))
        .unwrap();
    signal_this_thread(sig);
    let _ = one.run_once();
    let _ = two.run_once();
    assert_eq!(seen.get(), (1, 1));
    drop(one);
    assert_ne!(
        disposition(sig),
        libc::SIG_IGN,
        "the other loop still watches"
    );
    signal_this_thread(sig);
    let _ = two.run_once();
    assert_eq!(seen.get(), (1, 2));
    drop(two);
    assert_eq!(disposition(sig), libc::SIG_IGN);
    set_disposition(sig, libc::SIG_DFL);
}

/// A process-directed signal sent from another thread (the kernel may run
/// the handler in any thread) wakes a loop blocked in io_uring_enter.
#[test]
fn process_directed_signal_from_another_thread_wakes_the_loop() {
    let _s = serial();
    let sig = rt(8);
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::After(Duration::from_secs(20)))
        .build()
        .unwrap();
    let got = Rc::new(Cell::new(0u32));
    let g = got.clone();
    lp.add_signal(sig, move |_, ev| g.set(g.get() + ev.count))
        .unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: sends a signal that has a handler installed.
        unsafe { libc::kill(libc::getpid(), sig) };
    });
    let start = Instant::now();
    while got.get() == 0 && start.elapsed() < Duration::from_secs(15) {
        lp.run_once().unwrap();
    }
    sender.join().unwrap();
    assert_eq!(got.get(), 1);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "woke only after {:?}",
        start.elapsed()
    );
}

/// A signal handler may remove its own watch and others.
#[test]
fn handler_removes_signal_watches() {
    let _s = serial();
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

/// A signal sent to the loop's thread while it blocks in io_uring_enter
/// interrupts the wait; that same iteration runs the signal handler.
#[test]
fn signal_interrupting_the_wait_runs_in_that_iteration() {
    let _s = serial();
    let sig = rt(9);
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Forever)
        .build()
        .unwrap();
    let got = Rc::new(Cell::new(0u32));
    let g = got.clone();
    lp.add_signal(sig, move |_, ev| g.set(g.get() + ev.count))
        .unwrap();
    // The signal eventfd is process-wide: an earlier test's signal may have
    // left it readable, and then the first wait would return at once for
    // that. Settle it without blocking first, so the measured iteration
    // blocks until our signal.
    lp.set_wait_timeout(WaitTimeout::Never).unwrap();
    spin(&lp, 10);
    lp.set_wait_timeout(WaitTimeout::Forever).unwrap();
    assert_eq!(got.get(), 0);
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: tgkill to a live thread of this process, with a handler installed.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, sig) };
    });
    lp.run_once().unwrap();
    sender.join().unwrap();
    assert_eq!(
        got.get(),
        1,
        "the iteration the signal interrupted ran nothing"
    );
}

/// traps.md, liburing#849 and ClickHouse/silk#80: a wake-up of the signal
/// poll with no signal behind it runs no handler; and when the kernel ends
/// that multishot poll (a final completion without `F_MORE`, simulated
/// with an `ASYNC_CANCEL`), the loop arms it again, so a signal delivered to
/// another thread (which does not interrupt the loop's wait) still wakes it.
#[test]
fn signal_doorbell_ended_by_the_kernel_is_rearmed_and_a_spurious_wake_runs_nothing() {
    use std::collections::HashSet;
    const F_MORE: u32 = 1 << 1;
    let _s = serial();
    let sig = rt(20);
    let lp = nonblocking_loop();
    let before: HashSet<u64> = lp.in_flight_user_data().unwrap().into_iter().collect();
    let got = Rc::new(Cell::new(0u32));
    let g = got.clone();
    let id = lp
        .add_signal(sig, move |_, ev: SignalEvent| g.set(g.get() + ev.count))
        .unwrap();
    let _ = lp.run_once();
    let polls: Vec<u64> = lp
        .in_flight_user_data()
        .unwrap()
        .into_iter()
        .filter(|u| !before.contains(u))
        .collect();
    assert_eq!(polls.len(), 1, "the signal poll");
    lp.inject_completion(polls[0], libc::POLLIN as i32, F_MORE)
        .unwrap();
    spin(&lp, 5);
    assert_eq!(got.get(), 0, "a spurious wake-up ran a signal handler");
    let cancel = io_uring::opcode::AsyncCancel::new(polls[0]).build();
    // SAFETY: ASYNC_CANCEL points at no memory.
    unsafe { lp.submit(cancel, |_, c| assert_eq!(c.result, 0)) }.unwrap();
    spin(&lp, 5);
    lp.set_wait_timeout(WaitTimeout::After(Duration::from_secs(5)))
        .unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        signal_this_thread(sig);
    });
    let start = Instant::now();
    while got.get() == 0 {
        lp.run_once().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "deaf signal doorbell"
        );
    }
    t.join().unwrap();
    lp.remove_signal(id).unwrap();
}

/// With nesting allowed, a signal delivered while its own handler runs a
/// nested iteration is not lost: the handler runs again for it once it has
/// returned (the nested pick used to clear the count of a watch whose
/// handler was out). Found by an audit probe.
#[test]
fn a_delivery_during_its_own_nested_handler_is_kept() {
    let _s = serial();
    let lp = EventLoop::builder()
        .allow_nesting(true)
        .wait_timeout(WaitTimeout::Never)
        .build()
        .unwrap();
    let sig = rt(5);
    let seen = log::<u32>();
    let s = seen.clone();
    lp.add_signal(sig, move |h, ev| {
        s.borrow_mut().push(ev.count);
        if s.borrow().len() == 1 {
            signal_this_thread(sig);
            for _ in 0..5 {
                let _ = h.run_once();
            }
        }
    })
    .unwrap();
    signal_this_thread(sig);
    for _ in 0..5 {
        let _ = lp.run_once();
    }
    assert_eq!(*seen.borrow(), vec![1, 1], "one call per delivery");
}
