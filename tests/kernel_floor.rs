//! The kernel floor (Linux 6.1) and the fallbacks below the best setup.
//!
//! - A missing required feature (simulated: the probe is told to report it
//!   absent) makes `Builder::build` fail with `Error::KernelTooOld`, whose
//!   message names the running kernel's release and the feature.
//! - A ring built without SINGLE_ISSUER / DEFER_TASKRUN / SUBMIT_ALL
//!   (`Builder::plain_setup`) still gives the loop's semantics.
//! - `features()` reports values that fit the running kernel.
//!
//! These tests also run inside QEMU on Linux 6.1 and 6.12 (see `.ci/run`), so
//! they compare against the kernel they find, never against the host's.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use io_uring::opcode;
use ringloop::{Builder, Error, EventLoop, Interest, WaitTimeout};

/// Every feature the loop refuses to run without, by the name the test hook
/// and the error use.
const REQUIRED: [&str; 6] = [
    "IORING_FEAT_EXT_ARG",
    "IORING_FEAT_NODROP",
    "IORING_FEAT_CQE_SKIP",
    "IORING_OP_POLL_ADD",
    "IORING_OP_POLL_REMOVE",
    "IORING_OP_ASYNC_CANCEL",
];

/// `uname -r`, read without calling out to a tool.
fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read /proc/sys/kernel/osrelease")
        .trim()
        .to_string()
}

/// (major, minor) of a release string such as `6.1.0-56-cloud-amd64`.
fn version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn missing_ext_arg_is_a_clear_error() {
    let err = match Builder::default()
        .simulate_missing_feature("IORING_FEAT_EXT_ARG")
        .build()
    {
        Ok(_) => panic!("a loop was built although EXT_ARG was reported missing"),
        Err(e) => e,
    };
    let msg = err.to_string();
    match &err {
        Error::KernelTooOld {
            release: r,
            missing,
        } => {
            assert_eq!(*r, release(), "the error names the running kernel");
            assert!(missing.starts_with("IORING_FEAT_EXT_ARG"), "{missing}");
        }
        other => panic!("expected KernelTooOld, got {other:?}"),
    }
    assert!(msg.contains(&release()), "message lacks the release: {msg}");
    assert!(
        msg.contains("IORING_FEAT_EXT_ARG"),
        "message lacks the feature: {msg}"
    );
    assert!(msg.contains("6.1"), "message lacks the floor: {msg}");
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::Unsupported);
}

#[test]
fn missing_opcode_is_a_clear_error() {
    let err = match Builder::default()
        .simulate_missing_feature("IORING_OP_POLL_ADD")
        .build()
    {
        Ok(_) => panic!("a loop was built although POLL_ADD was reported missing"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::KernelTooOld { missing, .. } if *missing == "IORING_OP_POLL_ADD"),
        "{err:?}"
    );
    assert!(
        msg.contains(&release()) && msg.contains("IORING_OP_POLL_ADD"),
        "{msg}"
    );
}

#[test]
fn every_required_feature_is_checked() {
    for name in REQUIRED {
        match Builder::default().simulate_missing_feature(name).build() {
            Ok(_) => panic!("{name} reported missing, yet the loop was built"),
            Err(Error::KernelTooOld {
                release: r,
                missing,
            }) => {
                assert_eq!(r, release());
                assert!(missing.starts_with(name), "{name}: error names {missing}");
            }
            Err(other) => panic!("{name}: expected KernelTooOld, got {other:?}"),
        }
    }
    // The hook for a feature that is missing also fails the plain setup.
    assert!(matches!(
        Builder::default()
            .plain_setup(true)
            .simulate_missing_feature("IORING_FEAT_NODROP")
            .build(),
        Err(Error::KernelTooOld { .. })
    ));
}

#[test]
fn features_are_plausible() {
    let lp = Builder::default()
        .sq_entries(100)
        .cq_entries(300)
        .build()
        .unwrap();
    let f = lp.features().unwrap();
    println!("features on {}: {f:?}", f.kernel);
    assert_eq!(f.kernel, release());
    let (major, minor) = version(&f.kernel);
    assert!(
        (major, minor) >= (6, 1),
        "tests run on 6.1 or newer, got {}",
        f.kernel
    );

    // Required, or the build would have failed.
    assert!(f.ext_arg && f.nodrop && f.cqe_skip);
    for op in [
        opcode::PollAdd::CODE,
        opcode::PollRemove::CODE,
        opcode::AsyncCancel::CODE,
        opcode::Nop::CODE,
    ] {
        assert!(
            f.supports_opcode(op),
            "opcode {op} missing from {:?}",
            f.opcodes()
        );
    }
    assert!(
        f.opcodes().windows(2).all(|w| w[0] < w[1]),
        "opcodes sorted, no repeats"
    );
    assert!(!f.supports_opcode(250), "no kernel has opcode 250");

    // Sizes: rounded up to powers of two, CQ at least as large as SQ.
    assert!(
        f.sq_entries >= 100 && f.sq_entries.is_power_of_two(),
        "{}",
        f.sq_entries
    );
    assert!(
        f.cq_entries >= 300 && f.cq_entries.is_power_of_two(),
        "{}",
        f.cq_entries
    );
    assert!(f.cq_entries >= f.sq_entries);

    // Every kernel from the floor up accepts the best setup (6.0/6.1 flags)
    // and ring fd registration (5.18), unless CI asked for the fallback.
    let plain = std::env::var_os("RINGLOOP_PLAIN_SETUP").is_some_and(|v| v == "1");
    assert_eq!(
        f.single_issuer && f.defer_taskrun && f.submit_all,
        !plain,
        "{f:?}"
    );
    assert!(f.registered_ring, "{f:?}");
    assert!(f.fast_poll, "{f:?}");

    // Optional bits follow the kernel version.
    assert_eq!(f.min_timeout, (major, minor) >= (6, 12), "{f:?}");
    let futex = f.supports_opcode(opcode::FutexWait::CODE);
    assert_eq!(
        futex,
        (major, minor) >= (6, 7),
        "FUTEX_WAIT on {}",
        f.kernel
    );
}

#[test]
fn plain_setup_reports_the_fallback() {
    let lp = Builder::default().plain_setup(true).build().unwrap();
    let f = lp.features().unwrap();
    println!("plain setup on {}: {f:?}", f.kernel);
    assert!(
        !f.single_issuer && !f.defer_taskrun && !f.submit_all,
        "{f:?}"
    );
    assert!(f.ext_arg && f.nodrop && f.cqe_skip);
}

/// A watch on an fd the loop owns, an immediate, a timer and a remote
/// immediate, then "close means closed" on a second watch.
fn basic_scenario(lp: &EventLoop) {
    let log = Rc::new(RefCell::new(Vec::<String>::new()));

    let (a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut reader = a.try_clone().unwrap();
    let l = log.clone();
    lp.add_fd(a.into(), Interest::READ, move |h, ev| {
        let mut buf = [0u8; 16];
        match reader.read(&mut buf) {
            Ok(0) => {
                l.borrow_mut().push("eof".into());
                h.remove_fd(ev.id).unwrap();
            }
            Ok(n) => l
                .borrow_mut()
                .push(format!("read {}", String::from_utf8_lossy(&buf[..n]))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    })
    .unwrap();

    let l = log.clone();
    lp.add_immediate(move |_| l.borrow_mut().push("immediate".into()))
        .unwrap();
    let l = log.clone();
    let start = Instant::now();
    lp.add_timer(Duration::from_millis(20), move |_| {
        assert!(
            start.elapsed() >= Duration::from_millis(20),
            "timer ran early"
        );
        l.borrow_mut().push("timer".into());
    })
    .unwrap();

    let remote_ran = Arc::new(AtomicUsize::new(0));
    let remote = lp.remote().unwrap();
    let r = remote_ran.clone();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        remote
            .schedule(move |_| {
                r.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
    });

    b.write_all(b"hi").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Run until the remote immediate ran; the watch keeps the loop busy.
    while remote_ran.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "remote immediate never ran: {:?}",
            log.borrow()
        );
        lp.run_once().unwrap();
    }
    thread.join().unwrap();
    drop(b);
    while !log.borrow().iter().any(|e| e == "eof") {
        assert!(Instant::now() < deadline, "no EOF seen: {:?}", log.borrow());
        lp.run_once().unwrap();
    }
    assert_eq!(remote_ran.load(Ordering::SeqCst), 1);
    {
        // Whether the data or the 20 ms timer comes first depends on how fast
        // the machine is (a QEMU VM is slow); the rest of the order does not.
        let log = log.borrow();
        assert_eq!(log.len(), 4, "{log:?}");
        assert_eq!(log[0], "immediate", "the immediate runs first: {log:?}");
        assert!(log[1..3].contains(&"read hi".to_string()), "{log:?}");
        assert!(log[1..3].contains(&"timer".to_string()), "{log:?}");
        assert_eq!(log[3], "eof", "EOF after the peer closed: {log:?}");
    }

    // Close means closed: once the poll is in the kernel, removing the watch
    // closes the fd at once, and the peer sees EOF without another iteration.
    let (c, mut d) = UnixStream::pair().unwrap();
    d.set_nonblocking(true).unwrap();
    let id = lp
        .add_fd(c.into(), Interest::READ, |_, _| {
            panic!("nothing was written")
        })
        .unwrap();
    let fired = Rc::new(RefCell::new(false));
    let f = fired.clone();
    lp.add_timer(Duration::from_millis(10), move |_| *f.borrow_mut() = true)
        .unwrap();
    while !*fired.borrow() {
        assert!(Instant::now() < deadline, "timer never ran");
        lp.run_once().unwrap(); // enters the kernel: the poll is armed
    }
    let mut buf = [0u8; 4];
    assert_eq!(
        d.read(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock,
        "the watched end is still open"
    );
    lp.remove_fd(id).unwrap();
    assert_eq!(
        d.read(&mut buf).unwrap(),
        0,
        "peer sees EOF right after remove_fd"
    );
    assert!(!lp.has_events().unwrap());
}

#[test]
fn plain_setup_keeps_semantics() {
    let lp = Builder::default()
        .plain_setup(true)
        .wait_timeout(WaitTimeout::After(Duration::from_secs(2)))
        .build()
        .unwrap();
    basic_scenario(&lp);
}

#[test]
fn best_setup_keeps_semantics() {
    let lp = Builder::default()
        .wait_timeout(WaitTimeout::After(Duration::from_secs(2)))
        .build()
        .unwrap();
    basic_scenario(&lp);
}
