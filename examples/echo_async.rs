//! An echo server written with ringloop's futures.
//!
//! ```text
//! cargo run --example echo_async -- 127.0.0.1:7000
//! ```
//!
//! Takes the listen address as its only argument and prints exactly one line,
//! `listening on ADDR`, once it accepts connections. Each connection is a
//! task that reads into a buffer and writes it back until the peer closes.

use std::io::Write;

use ringloop::net::{TcpListener, TcpStream};
use ringloop::rt;

async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let (r, b) = stream.read(buf).await;
        buf = b;
        match r {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (r, b) = stream.write_all(buf).await;
        buf = b;
        if r.is_err() {
            return;
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), None) = (args.next(), args.next()) else {
        eprintln!("usage: echo_async LISTEN_ADDR   (for example 127.0.0.1:7000)");
        std::process::exit(2);
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
                Ok((stream, _peer)) => drop(rt::spawn(serve(stream))),
                // Out of fds and the like: keep serving the others.
                Err(e) => {
                    eprintln!("echo_async: accept: {e}");
                    ringloop::time::sleep(std::time::Duration::from_millis(10)).await;
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
