//! AsyncFd readiness: one multishot poll per fd vs the reactor's re-armed
//! one-shot polls, on a Unix socket ping-pong (two tasks, one thread).
//!
//! ```text
//! cargo run --release --example bench_asyncfd [ROUND_TRIPS]
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ringloop::io::AsyncFd;
use ringloop::rt;

async fn recv_exact(fd: &AsyncFd<UnixStream>, buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        let mut g = fd.readable().await.unwrap();
        match g.try_io(|mut s| s.read(&mut buf[got..])) {
            Ok(r) => got += r.unwrap(),
            Err(_would_block) => {}
        }
    }
}

async fn send_all(fd: &AsyncFd<UnixStream>, buf: &[u8]) {
    let mut sent = 0;
    while sent < buf.len() {
        let mut g = fd.writable().await.unwrap();
        match g.try_io(|mut s| s.write(&buf[sent..])) {
            Ok(r) => sent += r.unwrap(),
            Err(_would_block) => {}
        }
    }
}

fn run(multishot: bool, rounds: usize) -> (Duration, u64, u64) {
    let runtime = rt::Runtime::new().unwrap();
    let handle = runtime.handle();
    runtime.block_on(async move {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let a = AsyncFd::with_mode(a, multishot).unwrap();
        let b = AsyncFd::with_mode(b, multishot).unwrap();
        let before = handle.stats().unwrap();
        let start = Instant::now();
        let echo = rt::spawn(async move {
            let mut buf = [0u8; 64];
            for _ in 0..rounds {
                recv_exact(&b, &mut buf).await;
                send_all(&b, &buf).await;
            }
        });
        let mut buf = [7u8; 64];
        for _ in 0..rounds {
            send_all(&a, &buf).await;
            recv_exact(&a, &mut buf).await;
        }
        echo.await.unwrap();
        let d = start.elapsed();
        let after = handle.stats().unwrap();
        (
            d,
            after.enters - before.enters,
            after.completions - before.completions,
        )
    })
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    for _ in 0..2 {
        for multishot in [true, false] {
            let (d, enters, cqes) = run(multishot, rounds);
            println!(
                "{:9} round_trips={rounds} time={:.3}s {:6.2} us/round trip, {:.2} enters and {:.2} CQEs per round trip",
                if multishot { "multishot" } else { "one-shot" },
                d.as_secs_f64(),
                d.as_secs_f64() * 1e6 / rounds as f64,
                enters as f64 / rounds as f64,
                cqes as f64 / rounds as f64,
            );
        }
    }
}
