//! An HTTP/1.1 server that answers every request with `hello`, written with
//! ringloop's callback API.
//!
//! ```text
//! cargo run --release --example http_hello -- 127.0.0.1:8080
//! wrk -t2 -c100 -d10s http://127.0.0.1:8080/
//! ```
//!
//! It prints `listening on ADDR` once ready (port 0 picks a free port and the
//! line shows the one chosen).
//!
//! What it implements of HTTP/1.1, and nothing more:
//! - keep-alive (the default for HTTP/1.1; HTTP/1.0 only with
//!   `Connection: keep-alive`) and `Connection: close`;
//! - pipelining: every complete request in the input is answered, in order,
//!   and a request split over several reads waits for its remaining bytes;
//! - request bodies with `Content-Length` are read and ignored; a chunked
//!   body, a malformed request or a header block over 16 KiB gets a 400 (or
//!   431) answer and the connection is closed.
//!
//! Each connection is a non-blocking std socket watched with
//! [`Handle::add_fd`] (the watch owns the socket, the handler uses a
//! duplicate of the fd). Level-triggered READ: one read per call, then the
//! answers to every complete request go out in one write. When the socket is
//! full, the watch waits for WRITE|ERROR and stops reading, so a client that
//! pipelines without reading cannot make the server buffer without bound.
//! A client that half-closes while its answers are stuck is dropped.
//!
//! A connection that gets no request answered, no body byte read and no
//! answer byte written for 60 s (or the optional second argument, in
//! seconds) is closed: idle keep-alive clients, and slowloris clients that
//! trickle a request head, would otherwise hold their fds for ever. One
//! timer per connection checks a flag the handler sets.

use std::cell::Cell;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use ringloop::{EventLoop, FdEvent, FdId, Handle, Interest};

#[path = "shared/idle.rs"]
mod idle;
use idle::{close_when_idle, parse_idle};

const BODY: &[u8] = b"hello";
const READ_CHUNK: usize = 16 * 1024;
/// Largest accepted request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Stop reading while this much output waits for the socket.
const MAX_PENDING_OUT: usize = 256 * 1024;
const ACCEPT_BATCH: usize = 64;

fn main() {
    if let Err(e) = run() {
        eprintln!("http_hello: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), idle, None) = (args.next(), args.next(), args.next()) else {
        return Err("usage: http_hello ADDR [IDLE_SECS] (for example 127.0.0.1:8080)".into());
    };
    let idle = parse_idle(idle.as_deref())?;
    let listener = TcpListener::bind(&addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;

    let lp = EventLoop::new()?;
    let accepter = listener.try_clone()?;
    lp.add_fd(listener.into(), Interest::READ, move |lp, ev| {
        accept_some(lp, ev, &accepter, idle)
    })?;

    println!("listening on {local}");
    io::stdout().flush()?;
    lp.run()?;
    Ok(())
}

fn accept_some(lp: &Handle, ev: FdEvent, listener: &TcpListener, idle: Duration) {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve(lp, stream, idle) {
                    eprintln!("http_hello: dropping a connection: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of fds, say: the listener stays readable, so pause it
                // rather than be called again at once.
                eprintln!("http_hello: accept failed: {e}; pausing for 100 ms");
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

fn serve(lp: &Handle, stream: TcpStream, idle: Duration) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    let active = Rc::new(Cell::new(false));
    let mut conn = Conn {
        stream: stream.try_clone()?,
        input: vec![0; READ_CHUNK],
        filled: 0,
        output: Vec::new(),
        body_left: 0,
        closing: false,
        active: active.clone(),
    };
    let id = lp.add_fd(stream.into(), Interest::READ, move |lp, ev| {
        match conn.on_event(ev.ready) {
            Ok(Some(interest)) => {
                let _ = lp.set_interest(ev.id, interest);
            }
            // Closes the socket; the client sees EOF before this returns.
            Ok(None) | Err(_) => {
                let _ = lp.remove_fd(ev.id);
            }
        }
    })?;
    close_when_idle(lp, id, active, idle);
    Ok(())
}

struct Conn {
    stream: TcpStream,
    /// `input[..filled]` holds bytes read and not yet parsed; the rest is
    /// room for the next read (kept, so it is not zeroed again per read).
    input: Vec<u8>,
    filled: usize,
    /// Answers not yet written.
    output: Vec<u8>,
    /// Bytes of the current request's body still to skip.
    body_left: usize,
    /// Close once `output` is written: no more requests are read.
    closing: bool,
    /// Set whenever a request is answered or body or answer bytes move;
    /// the idle check clears it.
    active: Rc<Cell<bool>>,
}

impl Conn {
    /// Handles one event; returns the interest to wait for next, or `None`
    /// to close.
    fn on_event(&mut self, ready: Interest) -> io::Result<Option<Interest>> {
        if ready.contains(Interest::READ) && !self.closing {
            if self.input.len() < self.filled + READ_CHUNK {
                self.input.resize(self.filled + READ_CHUNK, 0);
            }
            match self.stream.read(&mut self.input[self.filled..]) {
                Ok(0) => self.closing = true,
                Ok(n) => {
                    self.filled += n;
                    self.answer_requests();
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(e),
            }
        } else if ready.contains(Interest::ERROR) && !ready.contains(Interest::WRITE) {
            // Asked for only while the socket is full: the client failed or
            // half-closed without reading its answers.
            return Ok(None);
        }
        self.flush()?;
        Ok(if !self.output.is_empty() {
            Some(Interest::WRITE | Interest::ERROR)
        } else if self.closing {
            None
        } else {
            Some(Interest::READ)
        })
    }

    /// Answers every complete request in `input`, in order.
    fn answer_requests(&mut self) {
        let mut at = 0;
        while !self.closing && self.output.len() < MAX_PENDING_OUT {
            if self.body_left > 0 {
                let skip = self.body_left.min(self.filled - at);
                self.body_left -= skip;
                if skip > 0 {
                    self.active.set(true);
                }
                at += skip;
                if self.body_left > 0 {
                    break;
                }
            }
            // Empty lines before a request line are ignored (RFC 9112 §2.2).
            at += blank_lines(&self.input[at..self.filled]);
            let rest = &self.input[at..self.filled];
            let Some(head_len) = find_head_end(rest) else {
                if rest.len() > MAX_HEAD {
                    self.reply_error("431 Request Header Fields Too Large");
                }
                break;
            };
            self.active.set(true);
            match parse_head(&rest[..head_len]) {
                Ok(req) => {
                    self.body_left = req.content_length;
                    self.reply_hello(req.keep_alive, req.http_1_0);
                }
                Err(status) => self.reply_error(status),
            }
            at += head_len;
        }
        self.input.copy_within(at..self.filled, 0);
        self.filled -= at;
    }

    fn reply_hello(&mut self, keep_alive: bool, http_1_0: bool) {
        self.output
            .extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n");
        if !keep_alive {
            self.output.extend_from_slice(b"Connection: close\r\n");
            self.closing = true;
        } else if http_1_0 {
            // An HTTP/1.0 client closes unless told the connection persists.
            self.output.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        self.output.extend_from_slice(b"Content-Length: 5\r\n\r\n");
        self.output.extend_from_slice(BODY);
    }

    fn reply_error(&mut self, status: &str) {
        let msg = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        self.output.extend_from_slice(msg.as_bytes());
        self.closing = true;
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        while written < self.output.len() {
            match self.stream.write(&self.output[written..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if written > 0 {
            self.output.drain(..written);
            self.active.set(true);
        }
        if self.output.is_empty() && !self.closing && self.filled > 0 {
            // Requests held back while the socket was full.
            self.answer_requests();
            if !self.output.is_empty() {
                return self.flush();
            }
        }
        Ok(())
    }
}

/// The length of the request head including its final blank line, if the
/// head is complete. Bare `\n` line ends are accepted, as RFC 9112 allows.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let next = &buf[nl + 1..];
        if next.first() == Some(&b'\n') {
            return Some(nl + 2);
        }
        if next.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

/// The length of the empty lines (`\r\n` or bare `\n`) at the start of
/// `buf`.
fn blank_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match &buf[at..] {
            [b'\n', ..] => at += 1,
            [b'\r', b'\n', ..] => at += 2,
            _ => return at,
        }
    }
}

struct Request {
    keep_alive: bool,
    /// An HTTP/1.0 request, whose client needs to be told of keep-alive.
    http_1_0: bool,
    content_length: usize,
}

/// Parses a request head; an `Err` is the status line to answer with.
fn parse_head(head: &[u8]) -> Result<Request, &'static str> {
    const BAD: &str = "400 Bad Request";
    let head = std::str::from_utf8(head).map_err(|_| BAD)?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(BAD)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD);
    };
    if method.is_empty() || target.is_empty() {
        return Err(BAD);
    }
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err("505 HTTP Version Not Supported"),
    };
    let mut content_length = 0;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(BAD)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| BAD)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked bodies are not supported by this example.
            return Err(BAD);
        }
    }
    Ok(Request {
        keep_alive,
        http_1_0: version == "HTTP/1.0",
        content_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(parse_head(b"GET / HTTP/1.1\r\n\r\n").unwrap().keep_alive);
        assert!(!parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            !parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            parse_head(b"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(parse_head(b"GET /\r\n\r\n").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    }
}
