//! A ping-pong over a socket pair, both ends watched by one loop: many
//! iterations of read, write and re-arm with every byte accounted for.
//! Also the workload used to count syscalls per event (see the report).

mod common;

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use common::*;
use ringloop::{EventLoop, Interest, WaitTimeout};

#[test]
fn ping_pong() {
    let rounds: u64 = std::env::var("PINGPONG_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let lp = EventLoop::builder()
        .plain_setup(std::env::var_os("PINGPONG_PLAIN").is_some())
        .wait_timeout(WaitTimeout::After(std::time::Duration::from_secs(5)))
        .build()
        .unwrap();
    let (a, b) = socketpair();
    let (ra, rb) = (a.as_raw_fd(), b.as_raw_fd());
    let count = Rc::new(Cell::new(0u64));
    let ids = Rc::new(std::cell::RefCell::new(Vec::new()));
    write_fd(ra, b"p").unwrap();
    for (fd, raw) in [(a, ra), (b, rb)] {
        let (c, all) = (count.clone(), ids.clone());
        let id = lp
            .add_fd(fd, Interest::READ, move |lp, _| {
                let data = read_fd(raw, 16).unwrap();
                assert_eq!(data, b"p", "one byte in flight at a time");
                c.set(c.get() + 1);
                if c.get() >= rounds {
                    for &id in all.borrow().iter() {
                        lp.set_interest(id, Interest::NONE).unwrap();
                    }
                } else {
                    write_fd(raw, b"p").unwrap();
                }
            })
            .unwrap();
        ids.borrow_mut().push(id);
    }
    lp.run().unwrap();
    assert_eq!(count.get(), rounds);
    let s = lp.stats().unwrap();
    eprintln!(
        "ping-pong: {rounds} handlers, {} io_uring_enter ({:.2} per event), {:?}",
        s.enters,
        s.enters as f64 / rounds as f64,
        s
    );
}
