//! TCP echo over loopback: ringloop (callback API and futures API) against
//! tokio's current-thread runtime.
//!
//! The server runs on the main thread with the loop under test; the client
//! is the same plain blocking-socket code for every server, on its own thread.
//! The servers: `ringloop` (add_fd READ watches, read/write in the handler),
//! `ringloop-edge` (the same with `Interest::READ | Interest::EDGE`),
//! `ringloop-async` (`ringloop::net`, completion-based recv/send on
//! `rt::Runtime`), `ringloop-async-multi` (the same with
//! `enable_multishot_recv`: one multishot receive per connection), `tokio`
//! (`tokio::net` on a current-thread runtime). Besides the client's view,
//! each line has the server thread's CPU time per message.
//!
//! * `latency`: one connection, 64-byte ping-pong; median and p99 round trip.
//! * `throughput`: 50 connections; each round writes one 64-byte message on
//!   every connection, then reads every echo back; messages per second.
//!
//! ```text
//! cargo run --release --example bench_echo -- [-m MESSAGES] [-c CONNS] [-p same|split|none] [-s SERVERS] [-t latency|throughput]
//! ```
//! Prints one line per (test, server) and a ratio line per test. `-s` takes
//! a comma-separated list of servers to run (default all; the ratio lines
//! need tokio among them) and `-t` one test: both keep a profile of one
//! server clean.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{flag, percentile, us};

const MSG: usize = 64;

/// What the client measured.
struct ClientResult {
    /// Round trips (latency test) or one entry per round (throughput test).
    times: Vec<Duration>,
    total: Duration,
    /// CPU time the server's thread used while the client ran (filled in by the server).
    server_cpu: Duration,
}

/// One connection, `n` ping-pongs (after 1000 untimed ones).
fn client_latency(addr: SocketAddr, n: usize) -> io::Result<ClientResult> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let msg = [7u8; MSG];
    let mut buf = [0u8; MSG];
    let mut times = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n + 1000 {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut buf)?;
        if i >= 1000 {
            times.push(t.elapsed());
        }
    }
    Ok(ClientResult {
        times,
        total: start.elapsed(),
        server_cpu: Duration::ZERO,
    })
}

/// `conns` connections, `rounds` rounds of one message on each.
fn client_throughput(addr: SocketAddr, conns: usize, rounds: usize) -> io::Result<ClientResult> {
    let mut socks = (0..conns)
        .map(|_| {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let msg = [7u8; MSG];
    let mut buf = [0u8; MSG];
    let mut times = Vec::with_capacity(rounds);
    let start = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        for s in &mut socks {
            s.write_all(&msg)?;
        }
        for s in &mut socks {
            s.read_exact(&mut buf)?;
        }
        times.push(t.elapsed());
    }
    Ok(ClientResult {
        times,
        total: start.elapsed(),
        server_cpu: Duration::ZERO,
    })
}

/// Runs the client on a thread; `done` is set when it has finished.
fn spawn_client(
    f: impl FnOnce() -> io::Result<ClientResult> + Send + 'static,
    done: Arc<AtomicBool>,
    wake: impl FnOnce() + Send + 'static,
) -> thread::JoinHandle<io::Result<ClientResult>> {
    thread::spawn(move || {
        common::pin_other();
        let r = f();
        done.store(true, Ordering::Release);
        wake();
        r
    })
}

/// The callback API's server: a READ watch per connection whose handler
/// reads and writes with plain syscalls. Level-triggered by default; with
/// `edge`, `Interest::READ | Interest::EDGE` (one multishot poll per
/// connection, nothing re-armed), whose handler reads until a short read,
/// as edge triggering requires.
fn ringloop_server(
    client: impl FnOnce(SocketAddr) -> io::Result<ClientResult> + Send + 'static,
    edge: bool,
) -> io::Result<(ClientResult, Option<(ringloop::Stats, ringloop::Stats)>)> {
    use ringloop::{EventLoop, Interest, WaitTimeout};
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Forever)
        .build()
        .map_err(io::Error::other)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let lfd = listener.as_raw_fd();
    lp.add_fd(OwnedFd::from(listener), Interest::READ, move |lp, _| {
        // SAFETY: accept4 on our listening socket; the result is wrapped at once.
        let fd = unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return;
        }
        // SAFETY: accept4 returned a new fd that nothing else owns.
        let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: sets TCP_NODELAY from a valid int.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let interest = if edge {
            Interest::READ | Interest::EDGE
        } else {
            Interest::READ
        };
        let _ = lp.add_fd(conn, interest, move |lp, ev| {
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: reads into a local buffer of the given size.
                let n = unsafe { libc::read(ev.fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n == 0
                    || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock)
                {
                    let _ = lp.remove_fd(ev.id);
                    return;
                }
                if n < 0 {
                    return;
                }
                // 64-byte echoes always fit in the socket buffer.
                // SAFETY: writes the n bytes just read.
                unsafe { libc::write(ev.fd, buf.as_ptr().cast(), n as usize) };
                // Level: the watch calls again while data is left. Edge: a
                // short read emptied the socket; later data is a new edge.
                if !edge || (n as usize) < buf.len() {
                    return;
                }
            }
        });
    })
    .map_err(io::Error::other)?;
    let done = Arc::new(AtomicBool::new(false));
    let remote = lp.remote().map_err(io::Error::other)?;
    let before = lp.stats().map_err(io::Error::other)?;
    let cpu = common::thread_cpu();
    let h = spawn_client(
        move || client(addr),
        done.clone(),
        move || {
            let _ = remote.wake();
        },
    );
    while !done.load(Ordering::Acquire) {
        lp.run_once().map_err(io::Error::other)?;
    }
    let server_cpu = common::thread_cpu() - cpu;
    let mut r = h.join().expect("client thread")?;
    r.server_cpu = server_cpu;
    let after = lp.stats().map_err(io::Error::other)?;
    Ok((r, Some((before, after))))
}

fn ringloop_async_server(
    client: impl FnOnce(SocketAddr) -> io::Result<ClientResult> + Send + 'static,
    multishot: bool,
) -> io::Result<(ClientResult, Option<(ringloop::Stats, ringloop::Stats)>)> {
    use ringloop::net::TcpListener;
    use ringloop::rt::{self, Runtime};
    use ringloop::{EventLoop, WaitTimeout};
    let lp = EventLoop::builder()
        .wait_timeout(WaitTimeout::Forever)
        .build()
        .map_err(io::Error::other)?;
    let rt = Runtime::with_loop(lp).map_err(io::Error::other)?;
    let handle = rt.handle();
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let done = Arc::new(AtomicBool::new(false));
        // The client thread wakes the main future through its waker.
        let waker = Arc::new(std::sync::Mutex::new(None::<std::task::Waker>));
        let w2 = waker.clone();
        let before = handle.stats().map_err(io::Error::other)?;
        let cpu = common::thread_cpu();
        let h = spawn_client(
            move || client(addr),
            done.clone(),
            move || {
                if let Some(w) = w2.lock().expect("waker").take() {
                    w.wake();
                }
            },
        );
        let acceptor = rt::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let _ = s.set_nodelay(true);
                if multishot {
                    s.enable_multishot_recv().expect("multishot receive");
                }
                rt::spawn(async move {
                    let mut buf = Vec::with_capacity(4096);
                    loop {
                        buf.clear();
                        let (r, b) = s.read(buf).await;
                        buf = b;
                        if !matches!(r, Ok(n) if n > 0) {
                            return;
                        }
                        let (r, b) = s.write_all(buf).await;
                        buf = b;
                        if r.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        std::future::poll_fn(|cx| {
            *waker.lock().expect("waker") = Some(cx.waker().clone());
            if done.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        let server_cpu = common::thread_cpu() - cpu;
        acceptor.abort();
        let mut r = h.join().expect("client thread")?;
        r.server_cpu = server_cpu;
        let after = handle.stats().map_err(io::Error::other)?;
        Ok((r, Some((before, after))))
    })
}

fn tokio_server(
    client: impl FnOnce(SocketAddr) -> io::Result<ClientResult> + Send + 'static,
) -> io::Result<(ClientResult, Option<(ringloop::Stats, ringloop::Stats)>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicBool::new(false));
        let cpu = common::thread_cpu();
        let h = spawn_client(
            move || client(addr),
            done,
            move || {
                let _ = tx.send(());
            },
        );
        loop {
            tokio::select! {
                _ = &mut rx => break,
                acc = listener.accept() => {
                    let (mut s, _) = acc?;
                    s.set_nodelay(true)?;
                    tokio::task::spawn_local(async move {
                        let mut buf = [0u8; 4096];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            }
        }
        let server_cpu = common::thread_cpu() - cpu;
        let mut r = h.join().expect("client thread")?;
        r.server_cpu = server_cpu;
        Ok((r, None))
    })
}

/// Runs `server` with `client` and returns the result.
type Server = fn(
    Box<dyn FnOnce(SocketAddr) -> io::Result<ClientResult> + Send>,
) -> io::Result<(ClientResult, Option<(ringloop::Stats, ringloop::Stats)>)>;

/// The loop's counters per echoed message (enters_per_event = per message).
fn fields(stats: Option<(ringloop::Stats, ringloop::Stats)>, msgs: usize) -> String {
    stats.map_or(String::new(), |(b, a)| {
        common::stats_fields(b, a, msgs as u64)
    })
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pin = common::Pin::from_args(&args);
    common::pin_setup(pin);
    println!("# threads pinned: {pin:?} (-p same|split|none)");
    let n: usize = flag(&args, "-m", 20_000);
    let conns: usize = flag(&args, "-c", 50);
    let rounds = (n / 10).max(1);
    // tokio last: every ratio is against it.
    let servers: [(&str, Server); 5] = [
        ("ringloop", |c| ringloop_server(c, false)),
        ("ringloop-edge", |c| ringloop_server(c, true)),
        ("ringloop-async", |c| ringloop_async_server(c, false)),
        ("ringloop-async-multi", |c| ringloop_async_server(c, true)),
        ("tokio", |c| tokio_server(c)),
    ];
    let only: String = flag(&args, "-s", String::from("all"));
    let test: String = flag(&args, "-t", String::from("all"));
    let servers: Vec<(&str, Server)> = servers
        .into_iter()
        .filter(|(name, _)| only == "all" || only.split(',').any(|s| s == *name))
        .collect();
    if servers.is_empty() || !["all", "latency", "throughput"].contains(&test.as_str()) {
        eprintln!("-s names none of the servers, or -t is not latency or throughput");
        std::process::exit(2);
    }
    let with_tokio = servers.last().is_some_and(|(name, _)| *name == "tokio");
    let ours = &servers[..servers.len() - usize::from(with_tokio)];
    // "NAME_vs_tokio=R" for each of our servers, R = f(tokio's, ours).
    let ratios = |prefix: &str, vals: &[f64], f: fn(f64, f64) -> f64| {
        let tokio = vals[vals.len() - 1];
        ours.iter()
            .zip(vals)
            .map(|((name, _), v)| format!("{prefix}{name}_vs_tokio={:.2}", f(tokio, *v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if test != "throughput" {
        latency(&servers, n, with_tokio, &ratios)?;
    }
    if test != "latency" {
        throughput(&servers, conns, rounds, with_tokio, &ratios)?;
    }
    Ok(())
}

type Ratios<'a> = dyn Fn(&str, &[f64], fn(f64, f64) -> f64) -> String + 'a;

fn latency(
    servers: &[(&str, Server)],
    n: usize,
    with_tokio: bool,
    ratios: &Ratios<'_>,
) -> io::Result<()> {
    let mut lat = Vec::new();
    for &(name, server) in servers {
        let (mut r, stats) = server(Box::new(move |a| client_latency(a, n)))?;
        let stats = fields(stats, n + 1000);
        r.times.sort();
        let med = percentile(&r.times, 50.0);
        println!(
            "echo-latency {name} conns=1 msgs={n} median_us={:.1} p99_us={:.1} server_cpu_ns_per_msg={:.0} {stats}",
            us(med),
            us(percentile(&r.times, 99.0)),
            r.server_cpu.as_nanos() as f64 / (n + 1000) as f64,
        );
        lat.push(med);
    }
    let lat: Vec<f64> = lat.iter().map(Duration::as_secs_f64).collect();
    if with_tokio {
        println!(
            "echo-latency ratio {} (tokio median / ours; >1 means ours is faster)",
            ratios("", &lat, |tokio, ours| tokio / ours)
        );
    }
    Ok(())
}

fn throughput(
    servers: &[(&str, Server)],
    conns: usize,
    rounds: usize,
    with_tokio: bool,
    ratios: &Ratios<'_>,
) -> io::Result<()> {
    let mut tput = Vec::new();
    let mut cpu = Vec::new();
    for &(name, server) in servers {
        let (r, stats) = server(Box::new(move |a| client_throughput(a, conns, rounds)))?;
        let stats = fields(stats, conns * rounds);
        let msgs = (conns * rounds) as f64;
        let rate = msgs / r.total.as_secs_f64();
        let cpu_per_msg = r.server_cpu.as_nanos() as f64 / msgs;
        println!(
            "echo-throughput {name} conns={conns} msgs={} msgs_per_s={rate:.0} server_cpu_ns_per_msg={cpu_per_msg:.0} {stats}",
            conns * rounds
        );
        tput.push(rate);
        cpu.push(cpu_per_msg);
    }
    if with_tokio {
        println!(
            "echo-throughput ratio {} {} (server CPU: tokio's per message / ours)",
            ratios("", &tput, |tokio, ours| ours / tokio),
            ratios("cpu_", &cpu, |tokio, ours| tokio / ours)
        );
    }
    Ok(())
}
