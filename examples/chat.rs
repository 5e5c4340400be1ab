//! A line-based chat server: every line a client sends goes to every other
//! client, as `NAME: line`.
//!
//! ```text
//! cargo run --release --example chat -- 127.0.0.1:7100
//! ```
//!
//! It prints `listening on ADDR` once ready (port 0 picks a free port and the
//! line shows the one chosen). Connect a few terminals with a line-based
//! client (`socat - TCP:127.0.0.1:7100`, `telnet`, `nc`).
//!
//! The protocol, from the client's side:
//! - on connecting it receives `* welcome NAME (N online)`; the others get
//!   `* NAME joined`;
//! - each line it sends reaches the others as `NAME: line`; `/nick NEW`
//!   renames it (`* OLD is now NEW`);
//! - when it leaves, the others get `* NAME left`.
//!
//! Written with the async API ([`ringloop::rt`], [`ringloop::net`]): each
//! client has a reader task (this connection's `client` future) and a
//! writer task that drains the client's outbox. Tasks run on the loop's
//! thread, so the room is a plain `Rc<RefCell<..>>`. What it takes care of:
//! - a client that vanishes mid-line: its unfinished line is dropped;
//! - a client that vanishes while the server writes to it (reset, broken
//!   pipe): its writer stops and shuts the socket down, which ends its
//!   reader; the others are not affected;
//! - a slow client: its outbox grows while it does not read; past 1 MiB it
//!   is disconnected, so one client cannot make the server grow without bound;
//! - lines over 4 KiB are cut into pieces; bytes that are not UTF-8 are
//!   replaced.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io::Write;
use std::net::Shutdown;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use ringloop::net::{TcpListener, TcpStream};
use ringloop::rt;

const MAX_LINE: usize = 4096;
const MAX_BACKLOG: usize = 1 << 20;
const READ_CHUNK: usize = 16 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), None) = (args.next(), args.next()) else {
        eprintln!("usage: chat ADDR (for example 127.0.0.1:7100)");
        std::process::exit(2);
    };
    if let Err(e) = run(&addr) {
        eprintln!("chat: {addr}: {e}");
        std::process::exit(1);
    }
}

fn run(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = rt::Runtime::new()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(addr)?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let room = Rc::new(Room::default());
        loop {
            match listener.accept().await {
                // Detached: the task runs until its client leaves.
                Ok((stream, _)) => drop(rt::spawn(client(room.clone(), stream))),
                Err(e) => {
                    // Out of fds and the like: keep serving the others.
                    eprintln!("chat: accept failed: {e}");
                    ringloop::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

#[derive(Default)]
struct Room {
    clients: RefCell<HashMap<u64, Rc<Client>>>,
    guests: Cell<u64>,
}

struct Client {
    name: RefCell<String>,
    stream: TcpStream,
    outbox: RefCell<Outbox>,
}

/// What is waiting to be written to one client.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    /// The client is gone or being dropped: its writer stops.
    closed: bool,
    /// The writer task, when it waits for bytes.
    waker: Option<Waker>,
}

impl Room {
    /// Sends `msg` to everyone but `from`.
    fn broadcast(&self, from: u64, msg: &str) {
        for (&id, client) in self.clients.borrow().iter() {
            if id != from {
                client.send(msg);
            }
        }
    }
}

impl Client {
    /// Queues `msg` and wakes the writer; drops a client that does not read.
    fn send(&self, msg: &str) {
        let mut out = self.outbox.borrow_mut();
        if out.closed {
            return;
        }
        if out.bytes.len() + msg.len() > MAX_BACKLOG {
            drop(out);
            self.close();
            return;
        }
        out.bytes.extend_from_slice(msg.as_bytes());
        if let Some(w) = out.waker.take() {
            w.wake();
        }
    }

    /// Stops the writer and ends the reader: `shutdown` makes the pending
    /// receive return end-of-stream.
    fn close(&self) {
        let mut out = self.outbox.borrow_mut();
        out.closed = true;
        if let Some(w) = out.waker.take() {
            w.wake();
        }
        drop(out);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// One connection: joins, reads lines until the client leaves, then leaves.
async fn client(room: Rc<Room>, stream: TcpStream) {
    let id = room.guests.get() + 1;
    room.guests.set(id);
    let name = format!("guest{id}");
    let me = Rc::new(Client {
        name: RefCell::new(name.clone()),
        stream,
        outbox: RefCell::default(),
    });
    room.clients.borrow_mut().insert(id, me.clone());
    let writer = rt::spawn(write_loop(me.clone()));
    let online = room.clients.borrow().len();
    me.send(&format!("* welcome {name} ({online} online)\n"));
    room.broadcast(id, &format!("* {name} joined\n"));

    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut line = Vec::new();
    'reading: loop {
        buf.clear();
        let (result, b) = me.stream.read(buf).await;
        buf = b;
        match result {
            // End of stream (an unfinished line is dropped), a reset, or
            // `close` from a writer that failed.
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        for piece in buf.split_inclusive(|&b| b == b'\n') {
            line.extend_from_slice(piece);
            // A longer line goes out in pieces of MAX_LINE bytes; its
            // newline does not count (else a line of exactly MAX_LINE
            // would leave it behind as an empty message).
            while line.len() - usize::from(line.ends_with(b"\n")) > MAX_LINE {
                said(&room, id, &me, &line[..MAX_LINE]);
                line.drain(..MAX_LINE);
            }
            if line.ends_with(b"\n") {
                said(&room, id, &me, &line);
                line.clear();
            }
            if me.outbox.borrow().closed {
                break 'reading;
            }
        }
    }

    room.clients.borrow_mut().remove(&id);
    me.close();
    let _ = writer.await;
    room.broadcast(id, &format!("* {} left\n", me.name.borrow()));
    // The last `Rc<Client>` goes here, and with it the socket.
}

/// Handles one line from client `id`.
fn said(room: &Room, id: u64, me: &Client, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']);
    if let Some(new) = text.strip_prefix("/nick ") {
        let new = new.split_whitespace().collect::<Vec<_>>().join("_");
        if new.is_empty() {
            return;
        }
        let old = me.name.replace(new.clone());
        let msg = format!("* {old} is now {new}\n");
        room.broadcast(id, &msg);
        me.send(&msg);
    } else {
        room.broadcast(id, &format!("{}: {text}\n", me.name.borrow()));
    }
}

/// Writes whatever is queued for `client`, until it is closed.
async fn write_loop(client: Rc<Client>) {
    let mut buf = Vec::new();
    loop {
        let more = poll_fn(|cx| {
            let mut out = client.outbox.borrow_mut();
            if out.closed {
                Poll::Ready(false)
            } else if !out.bytes.is_empty() {
                std::mem::swap(&mut out.bytes, &mut buf);
                Poll::Ready(true)
            } else {
                out.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if !more {
            return;
        }
        let (result, b) = client.stream.write_all(buf).await;
        buf = b;
        buf.clear();
        if result.is_err() {
            // It vanished while we wrote to it: end its reader too.
            client.close();
            return;
        }
    }
}
