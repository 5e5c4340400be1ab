//! Property test of `AsyncFd` readiness: no wake-up is ever lost. Reader
//! tasks wait on several fds while the test writes to them, hangs them up,
//! and drops and replaces them, in random order; after every step that
//! lets the loop run, each reader must have received everything written to
//! its fd, in order, and seen the hang-up if there was one. Run on both
//! ring set-ups, with an 8-entry completion queue (which overflows, and so
//! ends the multishot polls the loop must re-arm) and a roomy one. The
//! case count comes from `PROPTEST_CASES` (default 256).

mod common;

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use common::unix_stream_pair;
use proptest::prelude::*;
use ringloop::io::AsyncFd;
use ringloop::rt::{self, JoinHandle, Runtime};
use ringloop::{EventLoop, time};

const FDS: usize = 6;

#[derive(Debug, Clone)]
enum Step {
    /// Write this many bytes to fd `i`'s peer.
    Write(usize, usize),
    /// Let the loop run until every reader has caught up.
    Settle,
    /// Close fd `i`'s peer: its reader must see end of stream.
    HangUp(usize),
    /// Drop fd `i`'s reader and its `AsyncFd`, and start over on a new pair.
    Replace(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..FDS, 1..200usize).prop_map(|(i, n)| Step::Write(i, n)),
        2 => Just(Step::Settle),
        1 => (0..FDS).prop_map(Step::HangUp),
        1 => (0..FDS).prop_map(Step::Replace),
    ]
}

/// What a reader task saw.
#[derive(Default)]
struct Seen {
    bytes: Vec<u8>,
    eof: bool,
}

/// One fd under test: the peer the test writes to, what it wrote, and what
/// the reader task received.
struct Slot {
    peer: Option<UnixStream>,
    written: Vec<u8>,
    seen: Rc<RefCell<Seen>>,
    reader: JoinHandle<()>,
}

/// A reader task: waits for readiness, reads until `WouldBlock`, records
/// the bytes, and stops at end of stream.
fn start(rt: &Runtime) -> Slot {
    let (mine, peer) = unix_stream_pair();
    let seen = Rc::new(RefCell::new(Seen::default()));
    let fd = AsyncFd::new(mine).expect("AsyncFd");
    let record = seen.clone();
    let reader = rt.spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            let mut guard = fd.readable().await.expect("readable");
            match guard.try_io(|mut s| s.read(&mut buf)) {
                Ok(Ok(0)) => {
                    record.borrow_mut().eof = true;
                    return;
                }
                Ok(Ok(n)) => record.borrow_mut().bytes.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("read: {e}"),
                Err(_would_block) => {}
            }
        }
    });
    Slot {
        peer: Some(peer),
        written: Vec::new(),
        seen,
        reader,
    }
}

fn caught_up(slots: &[Slot]) -> bool {
    slots.iter().all(|s| {
        let seen = s.seen.borrow();
        seen.bytes == s.written && seen.eof == s.peer.is_none()
    })
}

fn run(steps: &[Step], plain: bool, cq: u32) {
    let lp = EventLoop::builder()
        .plain_setup(plain)
        .sq_entries(4)
        .cq_entries(cq)
        .build()
        .unwrap();
    let rt = Runtime::with_loop(lp).unwrap();
    let mut slots: Vec<Slot> = Vec::new();
    rt.block_on(async {
        for _ in 0..FDS {
            slots.push(start(&rt));
        }
    });
    let mut counter = 0u8;
    for step in steps.iter().chain([Step::Settle].iter()) {
        match *step {
            Step::Write(i, n) => {
                let Some(peer) = slots[i].peer.as_mut() else {
                    continue;
                };
                let data: Vec<u8> = (0..n)
                    .map(|_| {
                        counter = counter.wrapping_add(1);
                        counter
                    })
                    .collect();
                // Small writes: a Unix socket buffer holds far more than a
                // case ever writes unread.
                match peer.write(&data) {
                    Ok(k) => slots[i].written.extend_from_slice(&data[..k]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            Step::HangUp(i) => drop(slots[i].peer.take()),
            Step::Replace(i) => {
                slots[i].reader.abort();
                let fresh = rt.block_on(async { start(&rt) });
                let old = std::mem::replace(&mut slots[i], fresh);
                // The aborted task held the AsyncFd; once it is gone the
                // kernel has let go of the file and the peer sees the close.
                rt.block_on(async { rt::yield_now().await });
                if let Some(mut peer) = old.peer {
                    let mut waited = 0;
                    while peer.write(b"x").is_ok() {
                        waited += 1;
                        assert!(waited < 1000, "the dropped AsyncFd still holds its file");
                        rt.block_on(async { time::sleep(Duration::from_millis(1)).await });
                    }
                }
            }
            Step::Settle => {
                rt.block_on(async {
                    for _ in 0..200 {
                        if caught_up(&slots) {
                            return;
                        }
                        time::sleep(Duration::from_millis(1)).await;
                    }
                });
                for (i, s) in slots.iter().enumerate() {
                    let seen = s.seen.borrow();
                    assert_eq!(
                        seen.bytes.len(),
                        s.written.len(),
                        "fd {i}: a reader missed data (lost wake-up?)"
                    );
                    assert_eq!(seen.bytes, s.written, "fd {i}: bytes out of order");
                    assert_eq!(seen.eof, s.peer.is_none(), "fd {i}: hang-up not seen");
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn readiness_loses_no_wake_up(
        steps in prop::collection::vec(step(), 0..40),
        plain in any::<bool>(),
        small_cq in any::<bool>(),
    ) {
        run(&steps, plain, if small_cq { 8 } else { 256 });
    }
}

/// Every fd written at once through an 8-entry completion queue, twice,
/// on both set-ups: the overflow ends multishot polls, which must come back.
#[test]
fn writes_to_every_fd_through_an_overflowing_cq() {
    let mut steps = Vec::new();
    for _ in 0..2 {
        steps.extend((0..FDS).map(|i| Step::Write(i, 3)));
        steps.push(Step::Settle);
    }
    for plain in [false, true] {
        run(&steps, plain, 8);
    }
}
