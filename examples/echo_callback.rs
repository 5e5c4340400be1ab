//! An echo server written with ringloop's callback API.
//!
//! ```text
//! cargo run --release --example echo_callback -- 127.0.0.1:7000
//! ```
//!
//! It prints `listening on ADDR` once ready (port 0 picks a free port and the
//! line shows the one chosen). Try it with `nc 127.0.0.1 7000`.
//!
//! Every socket is a non-blocking std socket registered with
//! [`Handle::add_fd`]. The watch owns the socket, so removing the watch
//! closes it at once and the client sees EOF immediately; the handler does
//! its reads and writes through a duplicate of the fd (`try_clone`), which
//! is closed together with the watch.
//!
//! The careful parts of an echo server, and how this one handles them:
//! - **Partial writes**: what the socket did not take is kept in `pending`.
//! - **A full socket**: while `pending` is not empty the watch waits for
//!   WRITE and stops reading, so a client that sends without reading cannot
//!   make the server buffer without bound. The watch asks for WRITE|ERROR,
//!   not WRITE alone: a WRITE-only watch is not called when the client
//!   vanishes (see SEMANTICS.md §2).
//! - **EOF and half-close**: when the client shuts down its sending side,
//!   what it sent is still echoed, then the connection is closed. If that
//!   happens while the socket is full, the rest of its input is read (it is
//!   bounded by the kernel's receive buffer) and the watch waits for WRITE
//!   alone; a sweep removes such watches if the client vanishes meanwhile.
//! - **Errors** (reset, broken pipe) close that connection and nothing else.
//! - **Idle clients**: a connection that moves no byte for 60 s (or the
//!   optional second argument, in seconds) is closed, or a few hundred
//!   clients that connect and go quiet would use up the server's fds. One
//!   timer per connection checks a flag the handler sets: nothing per event.

use std::cell::{Cell, RefCell};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use ringloop::{EventLoop, FdEvent, FdId, Handle, Interest};

#[path = "shared/idle.rs"]
mod idle;
use idle::{close_when_idle, parse_idle};

/// How much one handler call reads at most, so that one busy client cannot
/// hold the loop for long.
const READ_CHUNK: usize = 64 * 1024;
/// How many connections one call of the listener's handler accepts at most.
const ACCEPT_BATCH: usize = 64;

fn main() {
    if let Err(e) = run() {
        eprintln!("echo_callback: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), idle, None) = (args.next(), args.next(), args.next()) else {
        return Err("usage: echo_callback ADDR [IDLE_SECS] (for example 127.0.0.1:7000)".into());
    };
    let idle = parse_idle(idle.as_deref())?;
    let listener = TcpListener::bind(&addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;

    let lp = EventLoop::new()?;
    let sweep = Sweep::new();
    let accepter = listener.try_clone()?;
    lp.add_fd(listener.into(), Interest::READ, move |lp, ev| {
        accept_some(lp, ev, &accepter, &sweep, idle)
    })?;

    println!("listening on {local}");
    io::stdout().flush()?;
    lp.run()?;
    Ok(())
}

/// Accepts up to [`ACCEPT_BATCH`] waiting connections.
fn accept_some(lp: &Handle, ev: FdEvent, listener: &TcpListener, sweep: &Sweep, idle: Duration) {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, _peer)) => {
                if let Err(e) = serve(lp, stream, sweep.clone(), idle) {
                    eprintln!("echo_callback: dropping a connection: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of fds, say. The listener stays readable, so a
                // level-triggered watch would call us again at once: pause it.
                eprintln!("echo_callback: accept failed: {e}; pausing for 100 ms");
                pause_listener(lp, ev.id);
                return;
            }
        }
    }
}

fn pause_listener(lp: &Handle, id: FdId) {
    if lp.set_interest(id, Interest::NONE).is_ok() {
        let _ = lp.add_timer(Duration::from_millis(100), move |lp| {
            let _ = lp.set_interest(id, Interest::READ);
        });
    }
}

/// One client connection, owned by its watch's handler.
struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet written back.
    pending: Vec<u8>,
    /// The client will send nothing more.
    read_closed: bool,
    buf: Box<[u8]>,
    /// Set whenever bytes move; the idle check clears it.
    active: Rc<Cell<bool>>,
}

fn serve(lp: &Handle, stream: TcpStream, sweep: Sweep, idle: Duration) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    let active = Rc::new(Cell::new(false));
    let mut conn = Conn {
        stream: stream.try_clone()?,
        pending: Vec::new(),
        read_closed: false,
        buf: vec![0; READ_CHUNK].into_boxed_slice(),
        active: active.clone(),
    };
    let id = lp.add_fd(stream.into(), Interest::READ, move |lp, ev| {
        match conn.on_event(ev.ready) {
            Ok(Next::Watch(interest)) => {
                let _ = lp.set_interest(ev.id, interest);
                if interest == Interest::WRITE {
                    sweep.watch(lp, ev.id);
                }
            }
            Ok(Next::Close) | Err(_) => {
                // The watch owns the socket: this closes it, and the client
                // sees EOF before remove_fd returns.
                let _ = lp.remove_fd(ev.id);
            }
        }
    })?;
    close_when_idle(lp, id, active, idle);
    Ok(())
}

/// What a connection wants after an event.
enum Next {
    Watch(Interest),
    Close,
}

impl Conn {
    fn on_event(&mut self, ready: Interest) -> io::Result<Next> {
        if ready.contains(Interest::READ) {
            self.read_once()?;
        } else if ready.contains(Interest::ERROR) && !self.read_closed {
            // Only asked for while `pending` is full. Either the connection
            // failed, or the client shut down its sending side.
            if let Some(e) = self.stream.take_error()? {
                return Err(e);
            }
            self.read_rest()?;
        }
        self.flush()?;
        Ok(match (self.pending.is_empty(), self.read_closed) {
            (true, true) => Next::Close,
            (true, false) => Next::Watch(Interest::READ),
            (false, false) => Next::Watch(Interest::WRITE | Interest::ERROR),
            (false, true) => Next::Watch(Interest::WRITE),
        })
    }

    /// Reads one chunk (level-triggered: if more is waiting we are called again).
    fn read_once(&mut self) -> io::Result<()> {
        match self.stream.read(&mut self.buf) {
            Ok(0) => self.read_closed = true,
            Ok(n) => {
                self.pending.extend_from_slice(&self.buf[..n]);
                self.active.set(true);
            }
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// After a half-close: what is left is bounded by the receive buffer.
    fn read_rest(&mut self) -> io::Result<()> {
        while !self.read_closed {
            match self.stream.read(&mut self.buf) {
                Ok(0) => self.read_closed = true,
                Ok(n) => self.pending.extend_from_slice(&self.buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes as much of `pending` as the socket takes.
    fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        while written < self.pending.len() {
            match self.stream.write(&self.pending[written..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if written > 0 {
            self.pending.drain(..written);
            self.active.set(true);
        }
        Ok(())
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

/// Removes watches the loop disabled.
///
/// A WRITE-only watch whose client hangs up is not called: the loop takes
/// WRITE out of its interest instead. Connections in that state are checked
/// once a second, only while there are any.
#[derive(Clone)]
struct Sweep(Rc<RefCell<SweepState>>);

#[derive(Default)]
struct SweepState {
    ids: Vec<FdId>,
    armed: bool,
}

impl Sweep {
    fn new() -> Self {
        Sweep(Rc::new(RefCell::new(SweepState::default())))
    }

    fn watch(&self, lp: &Handle, id: FdId) {
        let mut st = self.0.borrow_mut();
        if !st.ids.contains(&id) {
            st.ids.push(id);
        }
        if !st.armed {
            st.armed = true;
            let sweep = self.clone();
            let _ = lp.add_timer(Duration::from_secs(1), move |lp| sweep.run(lp));
        }
    }

    fn run(&self, lp: &Handle) {
        let ids = std::mem::take(&mut self.0.borrow_mut().ids);
        self.0.borrow_mut().armed = false;
        for id in ids {
            match lp.interest(id) {
                Ok(i) if i.is_empty() => {
                    let _ = lp.remove_fd(id);
                }
                Ok(i) if i == Interest::WRITE => self.watch(lp, id),
                _ => {} // Gone, or back to normal.
            }
        }
    }
}
