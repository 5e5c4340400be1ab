//! Starts the example servers (`http_hello`, `echo_callback`, `echo_async`,
//! `chat`) on loopback and talks to them with real `TcpStream` clients.
//!
//! The examples are separate binaries that this test does not build: plain
//! `cargo test` builds them (it compiles every example), and CI runs
//! `cargo build --examples` first. When a binary is missing (for example
//! under `cargo test --test examples_servers` on a fresh checkout), the test
//! prints why and passes without checking anything.

mod example_bin;
use example_bin::example_path;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Generous: the tests also run in a slow VM.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A running example server, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `name` on `127.0.0.1:0` and waits for its `listening on ADDR` line.
    fn start(name: &str) -> Option<Server> {
        Server::start_with(name, &[])
    }

    /// [`Server::start`] with more arguments after the address.
    fn start_with(name: &str, more: &[&str]) -> Option<Server> {
        let path = example_path(name)?;
        let mut child = Command::new(&path)
            .arg("127.0.0.1:0")
            .args(more)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("{name} did not print its ready line");
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"));
        Some(Server { child, addr })
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        s
    }

    /// Panics if the server exited (it must survive every client).
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("server exited: {status}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- HTTP ----

/// One parsed response: status code, headers (lower-cased names), body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_response(r: &mut BufReader<TcpStream>) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let mut parts = line.split_whitespace();
    assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {line:?}");
    let status = parts.next().and_then(|s| s.parse().ok()).expect("status");
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').expect("header line");
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .expect("content-length");
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("body");
    Response {
        status,
        headers,
        body,
    }
}

fn assert_eof(r: &mut BufReader<TcpStream>) {
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "data after the last response: {rest:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn http_keep_alive_pipelining_and_close() {
    let Some(mut server) = Server::start("http_hello") else {
        return;
    };
    let mut w = server.connect();
    let mut r = BufReader::new(w.try_clone().unwrap());

    // Several requests, one at a time, on one connection.
    for i in 0..5 {
        write!(w, "GET /{i} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let resp = read_response(&mut r);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"hello");
        assert_eq!(resp.header("connection"), None);
    }

    // Pipelined: ten requests in one write, one with a body to skip.
    let mut batch = String::new();
    for i in 0..9 {
        batch.push_str(&format!("GET /p{i} HTTP/1.1\r\nHost: test\r\n\r\n"));
    }
    batch.push_str("POST /form HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello=world");
    w.write_all(batch.as_bytes()).unwrap();
    for _ in 0..10 {
        let resp = read_response(&mut r);
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"hello"[..]));
    }

    // A request split across writes, with pauses in the middle of a line.
    for piece in ["GE", "T / HTTP/1.1\r\nHo", "st: test\r", "\n\r\n"] {
        w.write_all(piece.as_bytes()).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_response(&mut r).body, b"hello");

    // Connection: close answers, then closes.
    w.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eof(&mut r);
    server.assert_alive();
}

#[test]
fn http_1_0_and_bad_requests() {
    let Some(mut server) = Server::start("http_hello") else {
        return;
    };
    // HTTP/1.0 without keep-alive: one answer, then EOF.
    let mut w = server.connect();
    let mut r = BufReader::new(w.try_clone().unwrap());
    w.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).body, b"hello");
    assert_eof(&mut r);

    // HTTP/1.0 with keep-alive: the connection stays open.
    let mut w = server.connect();
    let mut r = BufReader::new(w.try_clone().unwrap());
    for _ in 0..2 {
        w.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let response = read_response(&mut r);
        assert_eq!(response.status, 200);
        // ... and says so, or the client would wait for the close.
        assert!(
            response
                .headers
                .contains(&("connection".into(), "keep-alive".into())),
            "{:?}",
            response.headers
        );
    }

    // Empty lines before a request line are ignored (RFC 9112 §2.2).
    let mut w = server.connect();
    let mut r = BufReader::new(w.try_clone().unwrap());
    w.write_all(b"\r\n\nGET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).body, b"hello");

    // Garbage gets a 400 and a close; the server goes on.
    for garbage in [
        &b"NONSENSE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nContent-Length: many\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"\xff\xfe / HTTP/1.1\r\n\r\n",
    ] {
        let mut w = server.connect();
        let mut r = BufReader::new(w.try_clone().unwrap());
        w.write_all(garbage).unwrap();
        assert_eq!(read_response(&mut r).status, 400, "for {garbage:?}");
        assert_eof(&mut r);
    }

    // An endless header block is refused, not buffered forever.
    let mut w = server.connect();
    let mut r = BufReader::new(w.try_clone().unwrap());
    let _ = w.write_all(b"GET / HTTP/1.1\r\n");
    let _ = w.write_all(&vec![b'a'; 64 * 1024]);
    assert_eq!(read_response(&mut r).status, 431);

    // A client that vanishes mid-request harms nobody.
    let mut w = server.connect();
    w.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    drop(w);
    let mut w = server.connect();
    let mut r = BufReader::new(w.try_clone().unwrap());
    w.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).body, b"hello");
    server.assert_alive();
}

#[test]
fn http_many_connections() {
    let Some(mut server) = Server::start("http_hello") else {
        return;
    };
    let addr = server.addr;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                // Each worker holds 16 connections open and round-robins over them.
                let conns: Vec<_> = (0..16)
                    .map(|_| {
                        let s = TcpStream::connect(addr).unwrap();
                        s.set_read_timeout(Some(TIMEOUT)).unwrap();
                        (s.try_clone().unwrap(), BufReader::new(s))
                    })
                    .collect();
                let mut conns = conns;
                for _ in 0..20 {
                    for (w, r) in conns.iter_mut() {
                        w.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                        assert_eq!(read_response(r).body, b"hello");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    server.assert_alive();
}

// ---- Echo ----

fn echo_tests(name: &str) {
    let Some(mut server) = Server::start(name) else {
        return;
    };

    // Small messages, one at a time.
    let mut s = server.connect();
    for msg in [&b"hello"[..], b"x", b"a longer line\n"] {
        s.write_all(msg).unwrap();
        let mut back = vec![0; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }

    // Many megabytes while reading concurrently: partial writes and WRITE
    // interest; then a half-close: everything comes back, then EOF.
    let payload: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    let s = server.connect();
    let mut writer = s.try_clone().unwrap();
    let expected = payload.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&payload).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    (&s).read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    assert_eq!(back.len(), expected.len());
    assert!(back == expected, "echoed bytes differ");

    // Half-close while the server is stuck on a full socket: send a lot
    // without reading, shut down, and only then read.
    let mut s = server.connect();
    let big = vec![b'z'; 4 << 20];
    let mut w = s.try_clone().unwrap();
    let sender = thread::spawn(move || {
        w.write_all(&big).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    thread::sleep(Duration::from_millis(200));
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    assert_eq!(back.len(), 4 << 20);

    // Clients that vanish: one mid-send without ever reading, one right
    // after connecting. Others are not affected.
    {
        let mut s = server.connect();
        s.set_nonblocking(true).unwrap();
        let chunk = vec![b'q'; 1 << 16];
        for _ in 0..256 {
            if s.write(&chunk).is_err() {
                break;
            }
        }
    }
    drop(server.connect());
    let clients: Vec<_> = (0..20).map(|_| server.connect()).collect();
    for (i, mut c) in clients.into_iter().enumerate() {
        let msg = format!("client {i}");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    server.assert_alive();
}

#[test]
fn echo_callback_server() {
    echo_tests("echo_callback");
}

/// `echo_async` is written by the executor's author; the same checks apply.
#[test]
fn echo_async_server() {
    echo_tests("echo_async");
}

// ---- Chat ----

struct ChatClient {
    w: TcpStream,
    r: BufReader<TcpStream>,
    name: String,
}

impl ChatClient {
    fn join(server: &Server) -> ChatClient {
        let w = server.connect();
        let mut r = BufReader::new(w.try_clone().unwrap());
        let welcome = read_line(&mut r);
        let name = welcome
            .strip_prefix("* welcome ")
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected welcome {welcome:?}"))
            .to_string();
        ChatClient { w, r, name }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.w, "{line}").unwrap();
    }

    fn expect(&mut self, want: &str) {
        assert_eq!(
            read_line(&mut self.r),
            want,
            "{} expected {want:?}",
            self.name
        );
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read a line");
    assert!(line.ends_with('\n'), "connection ended: {line:?}");
    line.trim_end().to_string()
}

#[test]
fn chat_broadcast_and_vanishing_clients() {
    let Some(mut server) = Server::start("chat") else {
        return;
    };
    let mut a = ChatClient::join(&server);
    let mut b = ChatClient::join(&server);
    a.expect(&format!("* {} joined", b.name));
    let mut c = ChatClient::join(&server);
    a.expect(&format!("* {} joined", c.name));
    b.expect(&format!("* {} joined", c.name));

    a.say("hello");
    b.expect(&format!("{}: hello", a.name));
    c.expect(&format!("{}: hello", a.name));

    // A client that disconnects in the middle of a line: the half line is
    // never broadcast, the others hear that it left.
    let mut d = ChatClient::join(&server);
    for x in [&mut a, &mut b, &mut c] {
        x.expect(&format!("* {} joined", d.name));
    }
    d.w.write_all(b"this line never ends").unwrap();
    thread::sleep(Duration::from_millis(50));
    let d_name = d.name.clone();
    drop(d);
    for x in [&mut a, &mut b, &mut c] {
        x.expect(&format!("* {d_name} left"));
    }

    // A client that sends half a line, never reads, and vanishes while the
    // server is writing a flood to it.
    let mut e = ChatClient::join(&server);
    for x in [&mut a, &mut b, &mut c] {
        x.expect(&format!("* {} joined", e.name));
    }
    e.w.write_all(b"oops").unwrap();
    let e_name = e.name.clone();
    let lines = 4000;
    let readers: Vec<_> = [b, c]
        .into_iter()
        .map(|mut x| {
            let (a_name, e_name) = (a.name.clone(), e_name.clone());
            thread::spawn(move || {
                let mut got = Vec::new();
                let mut e_left = false;
                loop {
                    let line = read_line(&mut x.r);
                    if line == format!("* {e_name} left") {
                        e_left = true;
                    } else if let Some(text) = line.strip_prefix(&format!("{a_name}: ")) {
                        got.push(text.to_string());
                    } else if !(line.starts_with("* ") && line.ends_with(" joined")) {
                        panic!("{} got an unexpected line {line:?}", x.name);
                    }
                    if e_left && got.last().map(String::as_str) == Some("done") {
                        return (x, got);
                    }
                }
            })
        })
        .collect();
    let filler = "f".repeat(180);
    for i in 0..lines {
        a.say(&format!("{i} {filler}"));
        if i == lines / 2 {
            // Vanish with unread data: the kernel resets the connection.
            drop(e);
            e = ChatClient::join(&server);
            // (A new client, so there is something to compare `a` against below.)
        }
    }
    let f_name = e.name.clone();
    a.say("done");
    for r in readers {
        let (x, got) = r.join().expect("a reader failed");
        assert_eq!(got.len(), lines + 1, "{} missed messages", x.name);
        for (i, text) in got.iter().take(lines).enumerate() {
            assert_eq!(text, &format!("{i} {filler}"));
        }
    }
    // A's own view: E joined, F joined and E left, in some order; nothing from E.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = read_line(&mut a.r);
        assert!(
            !line.contains("oops"),
            "a half line was broadcast: {line:?}"
        );
        seen.push(line);
    }
    seen.sort();
    let mut want = vec![format!("* {e_name} left"), format!("* {f_name} joined")];
    want.sort();
    assert_eq!(seen, want);
    server.assert_alive();
}

/// Lines longer than the chat's 4096-byte limit go out in pieces; a line of
/// exactly 4096 bytes is one message (its newline used to be left behind
/// and sent as an empty one).
#[test]
fn chat_splits_long_lines_at_the_limit() {
    let Some(mut server) = Server::start("chat") else {
        return;
    };
    let mut a = ChatClient::join(&server);
    let mut b = ChatClient::join(&server);
    a.expect(&format!("* {} joined", b.name));
    let exact = "x".repeat(4096);
    a.say(&exact);
    a.say(&format!("{exact}yz"));
    a.say("next");
    b.expect(&format!("{}: {exact}", a.name));
    b.expect(&format!("{}: {exact}", a.name));
    b.expect(&format!("{}: yz", a.name));
    b.expect(&format!("{}: next", a.name));
    server.assert_alive();
}

// ---- Idle connections ----

/// Reads until EOF or a reset; panics if the connection stays open.
fn wait_for_close(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the idle connection was not closed: {e}"),
        }
    }
}

/// Every server but chat (whose listeners are idle by design) closes a
/// connection that moves nothing for its idle timeout (1 s here), and keeps
/// one that talks every 100 ms; http_hello also closes a client that
/// trickles a request head without ever finishing it.
#[test]
fn idle_connections_are_closed_and_busy_ones_are_not() {
    for name in ["echo_async", "echo_callback", "http_hello"] {
        let Some(mut server) = Server::start_with(name, &["1"]) else {
            return;
        };
        let mut idle = server.connect();
        let mut slow = server.connect();
        let mut busy = server.connect();
        let mut busy_reader = BufReader::new(busy.try_clone().unwrap());
        let slow_writer = thread::spawn(move || {
            // A request head, one byte every 100 ms, never finished.
            for b in b"GET / HTTP/1.1\r\nX-Slow: ".iter().cycle().take(30) {
                if slow.write_all(&[*b]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            slow
        });
        for i in 0..30 {
            if name == "http_hello" {
                busy.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                assert_eq!(read_response(&mut busy_reader).body, b"hello", "{name}");
            } else {
                busy.write_all(format!("{i}\n").as_bytes()).unwrap();
                assert_eq!(read_line(&mut busy_reader), i.to_string(), "{name}");
            }
            thread::sleep(Duration::from_millis(100));
        }
        wait_for_close(&mut idle);
        let mut slow = slow_writer.join().unwrap();
        if name == "http_hello" {
            wait_for_close(&mut slow);
        }
        server.assert_alive();
    }
}
