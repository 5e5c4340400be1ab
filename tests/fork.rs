//! SEMANTICS.md §7: after `fork` the child cannot use the parent's ring.
//!
//! This test lives in its own binary on purpose: a forked child inherits
//! every fd of the process, so a test running beside it in the same binary
//! that closes a socket and expects its peer to see EOF would fail while the
//! child is alive (it holds the other end open).

mod common;

use common::*;
use ringloop::Error;

/// After fork, the child cannot use the parent's loop.
#[test]
fn fork_child_gets_forked_error() {
    let lp = nonblocking_loop();
    lp.add_immediate(|_| {}).unwrap();
    // SAFETY: the child only calls into the loop (which checks an atomic and
    // returns an error) and then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = if !matches!(lp.run_once(), Err(Error::Forked)) {
            1
        } else if !matches!(lp.add_immediate(|_| {}), Err(Error::Forked)) {
            2
        } else if !matches!(lp.stats(), Err(Error::Forked)) {
            3
        } else {
            0
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    assert_eq!(wait_child(pid), 0);
    // The parent's loop is unaffected.
    lp.run_once().unwrap();
}
