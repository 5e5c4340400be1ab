use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringloop::{EventLoop, Interest};

#[test]
fn smoke() {
    let lp = EventLoop::new().unwrap();
    eprintln!("{:?}", lp.features().unwrap());
    let log = Rc::new(RefCell::new(Vec::<String>::new()));
    let (a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut a2 = a.try_clone().unwrap();
    let l = log.clone();
    let id = lp
        .add_fd(a.into(), Interest::READ, move |lp, ev| {
            let mut buf = [0u8; 16];
            let n = a2.read(&mut buf).unwrap();
            l.borrow_mut().push(format!("read {n} {:?}", ev.ready));
            if n == 0 {
                lp.remove_fd(ev.id).unwrap();
            }
        })
        .unwrap();
    let l = log.clone();
    lp.add_immediate(move |_| l.borrow_mut().push("imm".into()))
        .unwrap();
    let l = log.clone();
    let start = Instant::now();
    lp.add_timer(Duration::from_millis(20), move |_| {
        l.borrow_mut().push(format!(
            "timer {}",
            start.elapsed() >= Duration::from_millis(20)
        ))
    })
    .unwrap();
    b.write_all(b"hi").unwrap();
    let remote = lp.remote().unwrap();
    let l2 = Rc::new(RefCell::new(false));
    std::thread::spawn(move || remote.schedule(|_| eprintln!("remote ran")).unwrap());
    lp.run_once().unwrap();
    lp.run_once().unwrap();
    drop(b);
    lp.run().unwrap();
    let _ = id;
    let _ = l2;
    eprintln!("{:?}", log.borrow());
    eprintln!("{:?}", lp.stats().unwrap());
}
