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

#[path = "model/mod.rs"]
mod model;

/// Found by prop_reactor (ops_match_the_model): a raw watch whose poll had
/// already fired was removed, and its poll cancel was only queued, not
/// handed to the kernel, so an operation stayed in flight and a caller that
/// closed the fd right after `remove_fd` left the file held (no EOF). Fixed
/// by flushing the cancel whenever the removed watch had a poll armed.
#[test]
fn raw_watch_removal_leaves_an_operation_in_flight() {
    model::ops::check_ops(&[
        27, 120, 0, 0, 0, 0, 0, 0, 0, 0, 11, 32, 0, 0, 0, 0, 0, 0, 0, 11, 101, 0, 0, 0, 0, 0, 0, 0,
        6, 0, 0, 204, 67, 125, 0, 0, 0, 19, 0, 0, 0, 0, 0, 1, 0, 0, 4, 0, 13, 6, 5, 0, 0, 0, 0, 0,
        0, 0, 64, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 21, 0, 0, 211, 139, 0, 40, 0, 0, 0, 0, 0, 206, 0, 0, 40, 0, 0, 206, 0, 0,
        100, 0, 0, 0, 0, 0, 81, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 17, 0, 0, 124, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 21, 0, 0, 18, 139, 0, 0, 0, 0, 17, 0, 0,
        0, 0, 0, 0,
    ]);
}
