//! The `cqe_dispatch` check: made-up completions (garbage, stale, duplicated,
//! out-of-order `user_data`, any result and flags) fed through
//! `Handle::inject_completion` between real registrations and iterations.
//! The loop must never panic, never call the handler of a removed watch,
//! never give flags outside the watch's interest (or none), and never run
//! an operation's callback twice.

use std::cell::RefCell;
use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use ringloop::{Builder, Error, FdId, Handle, OpId, WaitTimeout};

use super::{Src, open_fds};

#[derive(Default)]
struct Seen {
    alive: HashSet<FdId>,
    /// Every `user_data` ever seen in flight, to replay stale ones.
    old: Vec<u64>,
    /// Callback runs per submitted operation.
    op_calls: Vec<u32>,
    errors: Vec<String>,
}

type Rs = Rc<RefCell<Seen>>;

fn fd_handler(s: &Rs, h: &Handle, id: FdId, ready: ringloop::Interest, fd: i32) {
    let interest = h.interest(id);
    let mut g = s.borrow_mut();
    if !g.alive.contains(&id) {
        g.errors
            .push(format!("handler of removed watch {id:?} ran"));
        return;
    }
    match interest {
        Ok(i) if !ready.is_empty() && i.contains(ready) => {}
        other => g.errors.push(format!(
            "watch {id:?} got {ready:?} with interest {other:?}"
        )),
    }
    drop(g);
    // Consume what is there so a real readable fd does not spin.
    let mut buf = [0u8; 256];
    // SAFETY: reads into a live buffer; the fd is non-blocking.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
}

fn pick_user_data(src: &mut Src, h: &Handle, s: &Rs) -> u64 {
    let live = h.in_flight_user_data().unwrap_or_default();
    {
        let mut g = s.borrow_mut();
        for &u in &live {
            if !g.old.contains(&u) && g.old.len() < 256 {
                g.old.push(u);
            }
        }
    }
    let sel = src.u8();
    let k = src.u8() as usize;
    let base = match sel % 6 {
        0 | 1 if !live.is_empty() => live[k % live.len()],
        2 => {
            let g = s.borrow();
            if g.old.is_empty() {
                0
            } else {
                g.old[k % g.old.len()]
            }
        }
        3 => u64::from(src.u32()) | (u64::from(src.u32()) << 32),
        _ => 0,
    };
    // Perturb: flip a bit of the index or of the version, or none.
    match src.u8() % 5 {
        0 => base ^ (1 << (src.u8() % 64)),
        1 => base.wrapping_add(1),
        _ => base,
    }
}

fn pick_result(src: &mut Src) -> i32 {
    let v: [i32; 9] = [
        libc::POLLIN as i32,
        libc::POLLOUT as i32,
        (libc::POLLIN | libc::POLLRDHUP) as i32,
        (libc::POLLERR | libc::POLLHUP) as i32,
        (libc::POLLOUT | libc::POLLHUP) as i32,
        -libc::ECANCELED,
        -libc::EBADF,
        -libc::ENOENT,
        0,
    ];
    match src.u8() % 12 {
        n @ 0..=8 => v[n as usize],
        9 => i32::MIN,
        10 => -1,
        _ => src.u32() as i32,
    }
}

/// Runs the operations decoded from `data`; panics on the first violation.
pub fn check_cqe(data: &[u8]) {
    // SAFETY: process-wide and harmless.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let fds_before = open_fds();
    let lp = Builder::default()
        .wait_timeout(WaitTimeout::Never)
        .build()
        .expect("build loop");
    let s: Rs = Rc::default();
    let mut watches: Vec<FdId> = Vec::new();
    let mut peers: Vec<Option<UnixStream>> = Vec::new();
    let mut ops: Vec<OpId> = Vec::new();
    let mut src = Src::new(data);
    while !src.is_empty() {
        let op = src.u8();
        let a = src.u8();
        match op % 10 {
            0 if watches.len() < 8 => {
                let (ours, peer) = UnixStream::pair().expect("socketpair");
                ours.set_nonblocking(true).unwrap();
                peer.set_nonblocking(true).unwrap();
                let fd = ours.as_raw_fd();
                let s2 = s.clone();
                let id_cell: Rc<RefCell<Option<FdId>>> = Rc::default();
                let cell = id_cell.clone();
                let id = lp
                    .add_fd(
                        OwnedFd::from(ours),
                        ringloop::Interest::from_bits_truncate(a),
                        move |h, ev| {
                            let own = *cell.borrow();
                            if own != Some(ev.id) {
                                s2.borrow_mut()
                                    .errors
                                    .push(format!("event for {:?} given to {own:?}", ev.id));
                            }
                            fd_handler(&s2, h, ev.id, ev.ready, fd)
                        },
                    )
                    .expect("add_fd");
                *id_cell.borrow_mut() = Some(id);
                s.borrow_mut().alive.insert(id);
                watches.push(id);
                peers.push(Some(peer));
            }
            1 if !watches.is_empty() => {
                let id = watches[a as usize % watches.len()];
                let was = s.borrow_mut().alive.remove(&id);
                let r = lp.remove_fd(id);
                assert_eq!(r.is_ok(), was, "remove_fd({id:?}) = {r:?}");
            }
            2 if !watches.is_empty() => {
                let id = watches[a as usize % watches.len()];
                let bits = src.u8();
                let r = lp.set_interest(id, ringloop::Interest::from_bits_truncate(bits));
                assert_eq!(
                    r.is_ok(),
                    s.borrow().alive.contains(&id),
                    "set_interest: {r:?}"
                );
            }
            3 if !peers.is_empty() => {
                let k = a as usize % peers.len();
                if let Some(p) = &peers[k] {
                    // SAFETY: writes from a live buffer, non-blocking, no SIGPIPE.
                    unsafe {
                        libc::send(p.as_raw_fd(), b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL)
                    };
                }
            }
            4 if !peers.is_empty() => {
                let k = a as usize % peers.len();
                peers[k] = None;
            }
            5 if ops.len() < 16 => {
                let k = ops.len();
                s.borrow_mut().op_calls.push(0);
                let s2 = s.clone();
                // SAFETY: NOP points at no memory.
                let id = unsafe {
                    lp.submit(io_uring::opcode::Nop::new().build(), move |_, _| {
                        s2.borrow_mut().op_calls[k] += 1;
                    })
                }
                .expect("submit");
                ops.push(id);
            }
            6 | 7 => {
                let ud = pick_user_data(&mut src, &lp, &s);
                let res = pick_result(&mut src);
                let flags = match src.u8() % 4 {
                    // IORING_CQE_F_MORE
                    0 => 1 << 1,
                    1 => src.u32(),
                    _ => 0,
                };
                lp.inject_completion(ud, res, flags)
                    .expect("inject_completion");
            }
            _ => {
                for _ in 0..=(a % 3) {
                    match lp.run_once() {
                        Ok(()) | Err(Error::WouldBlock) => {}
                        Err(e) => panic!("run_once: {e}"),
                    }
                }
            }
        }
        let g = s.borrow();
        assert!(g.errors.is_empty(), "{:?}", g.errors);
        assert!(
            g.op_calls.iter().all(|&n| n <= 1),
            "a callback ran twice: {:?}",
            g.op_calls
        );
    }
    drop(lp);
    let g = s.borrow();
    assert!(g.errors.is_empty(), "{:?}", g.errors);
    assert!(g.op_calls.iter().all(|&n| n <= 1), "a callback ran twice");
    drop(g);
    drop(peers);
    drop(s);
    assert_eq!(fds_before, open_fds(), "fds leaked");
}
