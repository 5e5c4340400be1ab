//! traps.md, "Kernel, environment, memlock": an unprivileged user's ring is
//! charged against `RLIMIT_MEMLOCK` (measured on Linux 6.18: the default
//! 256/4096-entry ring needs about 96 KiB), and 64 KiB is a common limit in
//! containers. A loop with the default sizes shrinks its queues to fit; one
//! with sizes the user chose fails with a clear error instead.
//!
//! The checks run in a child process (this test binary again, one test
//! selected) that drops to an unprivileged user under a 64 KiB limit; as
//! root the limit does not apply (`CAP_IPC_LOCK`).

use std::os::unix::process::CommandExt;
use std::process::Command;

use ringloop::{Error, EventLoop, WaitTimeout};

const CHILD: &str = "RINGLOOP_MEMLOCK_CHILD";
const LIMIT: libc::rlim_t = 64 * 1024;

/// Runs `test` of this binary as user `uid` under a 64 KiB memlock limit.
/// `None` if this process cannot arrange that (not root, or the binary is
/// not reachable by that user).
///
/// The kernel counts locked memory per user, across processes, and frees a
/// closed ring's share a moment later: so each test uses a user of its own,
/// and a failed child is given one more try after a pause.
fn run_unprivileged(test: &str, uid: libc::uid_t) -> Option<std::process::Output> {
    let out = run_as(test, uid)?;
    if out.status.success() {
        return Some(out);
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    run_as(test, uid)
}

fn run_as(test: &str, uid: libc::uid_t) -> Option<std::process::Output> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: dropping to an unprivileged user needs root");
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1");
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.output() {
        Ok(out) if out.status.code() == Some(126) || out.status.code() == Some(127) => None,
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!("skipped: could not run the test binary unprivileged: {e}");
            None
        }
    }
}

/// Runs `test` unprivileged (see [`run_unprivileged`]) and asserts that it
/// ran and passed.
fn expect_child(test: &str, uid: libc::uid_t) {
    let Some(out) = run_unprivileged(test, uid) else {
        return;
    };
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{log}");
    assert!(
        log.contains("child: "),
        "the child test did not run:\n{log}"
    );
}

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

#[test]
fn default_loop_fits_a_64k_memlock_limit() {
    if in_child() {
        return;
    }
    expect_child("child_builds_a_default_loop_and_runs_a_timer", 65534);
}

#[test]
fn child_builds_a_default_loop_and_runs_a_timer() {
    if !in_child() {
        return;
    }
    let lp = match EventLoop::builder()
        .wait_timeout(WaitTimeout::After(std::time::Duration::from_secs(10)))
        .build()
    {
        Ok(lp) => lp,
        Err(e) => panic!("a default loop under a 64 KiB memlock limit: {e}"),
    };
    let f = lp.features().unwrap();
    println!("child: built sq={} cq={}", f.sq_entries, f.cq_entries);
    let fired = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = fired.clone();
    lp.add_timer(std::time::Duration::from_millis(1), move |_| flag.set(true))
        .unwrap();
    lp.run().unwrap();
    assert!(fired.get());
}

#[test]
fn chosen_sizes_are_not_shrunk() {
    if in_child() {
        return;
    }
    expect_child("child_builds_a_loop_with_chosen_sizes", 65533);
}

#[test]
fn child_builds_a_loop_with_chosen_sizes() {
    if !in_child() {
        return;
    }
    match EventLoop::builder()
        .sq_entries(256)
        .cq_entries(8192)
        .build()
    {
        // A kernel that does not charge the ring to RLIMIT_MEMLOCK.
        Ok(lp) => {
            let f = lp.features().unwrap();
            assert_eq!(f.cq_entries, 8192, "a chosen size is used as it is");
            println!("child: built, this kernel does not charge the ring");
        }
        Err(Error::Unavailable { source, hint }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOMEM));
            assert!(hint.contains("RLIMIT_MEMLOCK"), "{hint}");
            println!("child: refused with ENOMEM: {hint}");
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}
