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
//! Written with the callback API: one [`Handle::add_fd`] watch per client,
//! all clients in one shared `Room`. What it takes care of:
//! - a client that vanishes mid-line: its unfinished line is dropped;
//! - a client that vanishes while the server writes to it (reset, broken
//!   pipe): only that client is dropped, the broadcast goes on to the others;
//! - a slow client: its unsent output is kept and the watch waits for
//!   WRITE as well as READ; past 1 MiB of backlog it is disconnected, so one
//!   client that does not read cannot make the server grow without bound;
//! - lines over 4 KiB are cut into pieces; bytes that are not UTF-8 are
//!   replaced.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use ringloop::{EventLoop, FdEvent, FdId, Handle, Interest};

const MAX_LINE: usize = 4096;
const MAX_BACKLOG: usize = 1 << 20;
const READ_CHUNK: usize = 16 * 1024;

fn main() {
    if let Err(e) = run() {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .ok_or("usage: chat ADDR (for example 127.0.0.1:7100)")?;
    let listener = TcpListener::bind(&addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;

    let lp = EventLoop::new()?;
    let room = Rc::new(RefCell::new(Room::default()));
    let accepter = listener.try_clone()?;
    lp.add_fd(listener.into(), Interest::READ, move |lp, ev| {
        loop {
            match accepter.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = join(lp, &room, stream) {
                        eprintln!("chat: dropping a connection: {e}");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("chat: accept failed: {e}; pausing for 100 ms");
                    pause(lp, ev.id);
                    return;
                }
            }
        }
    })?;

    println!("listening on {local}");
    io::stdout().flush()?;
    lp.run()?;
    Ok(())
}

/// Stops accepting for a while (when out of fds, say), since the
/// level-triggered listener would otherwise be reported again at once.
fn pause(lp: &Handle, id: FdId) {
    if lp.set_interest(id, Interest::NONE).is_ok() {
        let _ = lp.add_timer(Duration::from_millis(100), move |lp| {
            let _ = lp.set_interest(id, Interest::READ);
        });
    }
}

#[derive(Default)]
struct Room {
    clients: HashMap<FdId, Client>,
    guests: u64,
}

struct Client {
    name: String,
    /// A duplicate of the fd the watch owns; the watch's removal closes both.
    stream: TcpStream,
    /// An unfinished line.
    input: Vec<u8>,
    /// What the socket has not taken yet.
    output: Vec<u8>,
}

fn join(lp: &Handle, room: &Rc<RefCell<Room>>, stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    let dup = stream.try_clone()?;
    let shared = room.clone();
    let id = lp.add_fd(stream.into(), Interest::READ, move |lp, ev| {
        on_client_event(lp, &shared, ev)
    })?;
    let mut r = room.borrow_mut();
    r.guests += 1;
    let name = format!("guest{}", r.guests);
    r.clients.insert(
        id,
        Client {
            name: name.clone(),
            stream: dup,
            input: Vec::new(),
            output: Vec::new(),
        },
    );
    let online = r.clients.len();
    let mut gone = Vec::new();
    r.send(
        lp,
        id,
        format!("* welcome {name} ({online} online)\n").as_bytes(),
        &mut gone,
    );
    r.broadcast(lp, id, format!("* {name} joined\n").as_bytes(), &mut gone);
    drop(r);
    leave_all(lp, room, gone);
    Ok(())
}

fn on_client_event(lp: &Handle, room: &Rc<RefCell<Room>>, ev: FdEvent) {
    let mut gone = Vec::new();
    {
        let mut r = room.borrow_mut();
        if ev.ready.contains(Interest::WRITE) {
            r.flush(lp, ev.id, &mut gone);
        }
        if ev.ready.contains(Interest::READ) {
            r.read(lp, ev.id, &mut gone);
        }
    }
    leave_all(lp, room, gone);
}

/// Removes clients that left or failed, telling the others; those that fail
/// while being told are removed in turn.
fn leave_all(lp: &Handle, room: &Rc<RefCell<Room>>, mut gone: Vec<FdId>) {
    while let Some(id) = gone.pop() {
        let Some(client) = room.borrow_mut().clients.remove(&id) else {
            continue;
        };
        // Closes the client's socket (the dup first, then the watch's own fd):
        // it sees EOF before remove_fd returns. Not under the room's borrow,
        // because this drops the watch's handler.
        drop(client.stream);
        let _ = lp.remove_fd(id);
        let msg = format!("* {} left\n", client.name);
        room.borrow_mut()
            .broadcast(lp, id, msg.as_bytes(), &mut gone);
    }
}

impl Room {
    /// Reads once (the watch is level-triggered: more input means another
    /// call) and broadcasts every complete line.
    fn read(&mut self, lp: &Handle, id: FdId, gone: &mut Vec<FdId>) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let mut buf = [0u8; READ_CHUNK];
        let n = match client.stream.read(&mut buf) {
            Ok(0) => {
                // EOF: an unfinished line is dropped with the client.
                gone.push(id);
                return;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
            Err(_) => {
                gone.push(id);
                return;
            }
        };
        client.input.extend_from_slice(&buf[..n]);
        let mut lines = Vec::new();
        let mut start = 0;
        let input = &client.input;
        while let Some(off) = input[start..].iter().position(|&b| b == b'\n') {
            lines.push(input[start..start + off].to_vec());
            start += off + 1;
        }
        while input.len() - start > MAX_LINE {
            lines.push(input[start..start + MAX_LINE].to_vec());
            start += MAX_LINE;
        }
        client.input.drain(..start);
        for line in lines {
            self.said(lp, id, &line, gone);
        }
    }

    /// Handles one line from a client.
    fn said(&mut self, lp: &Handle, id: FdId, line: &[u8], gone: &mut Vec<FdId>) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let text = String::from_utf8_lossy(line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        if let Some(new) = text.strip_prefix("/nick ") {
            let new: String = new.split_whitespace().collect::<Vec<_>>().join("_");
            if new.is_empty() {
                return;
            }
            let old = std::mem::replace(&mut client.name, new.clone());
            let msg = format!("* {old} is now {new}\n");
            self.broadcast(lp, id, msg.as_bytes(), gone);
            self.send(lp, id, msg.as_bytes(), gone);
        } else {
            let msg = format!("{}: {text}\n", client.name);
            self.broadcast(lp, id, msg.as_bytes(), gone);
        }
    }

    /// Sends `msg` to everyone but `from`.
    fn broadcast(&mut self, lp: &Handle, from: FdId, msg: &[u8], gone: &mut Vec<FdId>) {
        let ids: Vec<FdId> = self
            .clients
            .keys()
            .copied()
            .filter(|&k| k != from)
            .collect();
        for id in ids {
            self.send(lp, id, msg, gone);
        }
    }

    /// Queues `msg` for one client and writes what the socket takes.
    fn send(&mut self, lp: &Handle, id: FdId, msg: &[u8], gone: &mut Vec<FdId>) {
        if gone.contains(&id) {
            return;
        }
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        client.output.extend_from_slice(msg);
        if client.output.len() > MAX_BACKLOG {
            // It stopped reading: drop it rather than buffer without bound.
            gone.push(id);
            return;
        }
        if client.output.len() == msg.len() {
            // Nothing was queued before: try the socket now.
            self.flush(lp, id, gone);
        }
    }

    /// Writes queued output; waits for WRITE (and READ, which also reports a
    /// hang-up) while some is left.
    fn flush(&mut self, lp: &Handle, id: FdId, gone: &mut Vec<FdId>) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let mut written = 0;
        while written < client.output.len() {
            match client.stream.write(&client.output[written..]) {
                Ok(0) => {
                    gone.push(id);
                    return;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // Reset or broken pipe: this client vanished mid-write.
                    gone.push(id);
                    return;
                }
            }
        }
        client.output.drain(..written);
        let interest = if client.output.is_empty() {
            Interest::READ
        } else {
            Interest::READ | Interest::WRITE
        };
        let _ = lp.set_interest(id, interest);
    }
}
