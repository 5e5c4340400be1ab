//! An echo server written with ringloop's futures.
//!
//! ```text
//! cargo run --example echo_async -- 127.0.0.1:7000
//! ```
//!
//! Takes the listen address as its argument and prints exactly one line,
//! `listening on ADDR`, once it accepts connections. Each connection is a
//! task that reads into a buffer and writes it back until the peer closes.
//!
//! A connection whose read or write makes no progress for 60 s (or the
//! optional second argument, in seconds) is closed: an idle client, or one
//! that never reads its echo, would otherwise keep its fd for ever, and a
//! few hundred of them would use up the server's fds.

use std::io::Write;
use std::time::Duration;

use ringloop::net::{TcpListener, TcpStream};
use ringloop::{rt, time};

async fn serve(stream: TcpStream, idle: Duration) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        // A timed-out read loses nothing (it is cancelled, and the socket
        // keeps any bytes it brought), but the connection ends anyway.
        let Ok((r, b)) = time::timeout(idle, stream.read(buf)).await else {
            return;
        };
        buf = b;
        match r {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Ok((r, b)) = time::timeout(idle, stream.write_all(buf)).await else {
            return;
        };
        buf = b;
        if r.is_err() {
            return;
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), idle, None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: echo_async LISTEN_ADDR [IDLE_SECS]   (for example 127.0.0.1:7000)");
        std::process::exit(2);
    };
    let idle = match idle.as_deref().map(str::parse::<f64>) {
        None => Duration::from_secs(60),
        Some(Ok(secs)) if secs > 0.0 && secs < 1e9 => Duration::from_secs_f64(secs),
        Some(_) => {
            eprintln!("echo_async: IDLE_SECS must be a number of seconds above 0");
            std::process::exit(2);
        }
    };
    let runtime = match rt::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("echo_async: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let listener = TcpListener::bind(addr.as_str())?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => drop(rt::spawn(serve(stream, idle))),
                // Out of fds and the like: keep serving the others.
                Err(e) => {
                    eprintln!("echo_async: accept: {e}");
                    time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    if let Err(e) = result {
        eprintln!("echo_async: {addr}: {e}");
        std::process::exit(1);
    }
}
