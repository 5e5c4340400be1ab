//! Echo ping-pong over loopback TCP: ringloop vs tokio's current-thread
//! runtime, in the same run. Server and clients share one thread per
//! runtime, so this measures the whole runtime on one core.
//!
//! ```text
//! cargo run --release --example echo_bench [ROUND_TRIPS_PER_CONN_1] [ROUND_TRIPS_PER_CONN_50]
//! ```

use std::time::{Duration, Instant};

const MSG: usize = 64;

fn ringloop_run(conns: usize, rounds: usize) -> Duration {
    use ringloop::net::{TcpListener, TcpStream};
    use ringloop::rt;
    rt::block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = rt::spawn(async move {
            for _ in 0..conns {
                let (s, _) = listener.accept().await.unwrap();
                s.set_nodelay(true).unwrap();
                rt::spawn(async move {
                    let mut buf = Vec::with_capacity(4096);
                    loop {
                        buf.clear();
                        let (r, b) = s.read(buf).await;
                        buf = b;
                        if r.unwrap_or(0) == 0 {
                            return;
                        }
                        let (r, b) = s.write_all(buf).await;
                        buf = b;
                        r.unwrap();
                    }
                });
            }
        });
        let mut clients = Vec::new();
        for _ in 0..conns {
            let c = TcpStream::connect(addr).await.unwrap();
            c.set_nodelay(true).unwrap();
            clients.push(c);
        }
        server.await.unwrap();
        let start = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|c| {
                rt::spawn(async move {
                    let mut out = vec![7u8; MSG];
                    let mut inb = Vec::with_capacity(MSG);
                    for _ in 0..rounds {
                        out = c.write_all(out).await.1;
                        inb.clear();
                        while inb.len() < MSG {
                            let (r, b) = c.read(inb).await;
                            inb = b;
                            assert!(r.unwrap() > 0);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

fn tokio_run(conns: usize, rounds: usize) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..conns {
                let (mut s, _) = listener.accept().await.unwrap();
                s.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        s.write_all(&buf[..n]).await.unwrap();
                    }
                });
            }
        });
        let mut clients = Vec::new();
        for _ in 0..conns {
            let c = TcpStream::connect(addr).await.unwrap();
            c.set_nodelay(true).unwrap();
            clients.push(c);
        }
        server.await.unwrap();
        let start = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    let out = [7u8; MSG];
                    let mut inb = [0u8; MSG];
                    for _ in 0..rounds {
                        c.write_all(&out).await.unwrap();
                        c.read_exact(&mut inb).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

fn report(name: &str, conns: usize, rounds: usize, d: Duration) {
    let total = (conns * rounds) as f64;
    println!(
        "{name:8} conns={conns:3} round_trips={:7} time={:7.3}s  {:9.0} round trips/s  {:6.2} us/round trip",
        conns * rounds,
        d.as_secs_f64(),
        total / d.as_secs_f64(),
        d.as_secs_f64() * 1e6 / total
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let r1: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let r50: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    for (conns, rounds) in [(1, r1), (50, r50)] {
        // Alternate, twice each, to even out noise from other processes.
        for _ in 0..2 {
            report("ringloop", conns, rounds, ringloop_run(conns, rounds));
            report("tokio", conns, rounds, tokio_run(conns, rounds));
        }
    }
}
