//! Regression tests for bugs the property tests and fuzzers found.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use ringloop::{Builder, Completion, Interest, WaitTimeout};

/// cqe_dispatch: a poll completion with result `i32::MIN` overflowed when
/// negated into an errno (a panic in debug builds). It must disarm the
/// watch like any other error.
#[test]
fn poll_result_i32_min_disarms_without_panic() {
    let lp = Builder::default()
        .wait_timeout(WaitTimeout::Never)
        .build()
        .unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let id = lp
        .add_fd(OwnedFd::from(a), Interest::READ, |_, _| {
            panic!("must not run")
        })
        .unwrap();
    let _ = lp.run_once();
    for ud in lp.in_flight_user_data().unwrap() {
        lp.inject_completion(ud, i32::MIN, 0).unwrap();
    }
    let _ = lp.run_once();
    assert!(lp.fd_error(id).unwrap().is_some());
    assert!(lp.interest(id).unwrap().is_empty());
    lp.remove_fd(id).unwrap();
}

/// The same overflow in `Completion::result`.
#[test]
fn completion_result_i32_min_is_an_error() {
    let c = Completion {
        result: i32::MIN,
        flags: 0,
    };
    assert!(c.result().is_err());
}
