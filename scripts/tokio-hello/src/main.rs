//! The same server as ringloop's `examples/http_hello.rs`, on tokio, for
//! comparison: HTTP/1.1 "hello", keep-alive, pipelining, one answer write per
//! batch of requests read.
//!
//! ```text
//! cargo run --release --manifest-path scripts/tokio-hello/Cargo.toml -- 127.0.0.1:8081 [THREADS]
//! ```
//!
//! THREADS defaults to 1: a current-thread runtime, like ringloop's single
//! loop. Any other number starts a multi-thread runtime with that many workers.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
const CLOSE_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello";

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8081".into());
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let _ = serve(stream).await;
            });
        }
    })
}

async fn serve(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut input = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut output = Vec::new();
    loop {
        if filled == input.len() {
            if input.len() >= 64 * 1024 {
                return Ok(());
            }
            input.resize(input.len() * 2, 0);
        }
        let n = stream.read(&mut input[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut at = 0;
        let mut close = false;
        while let Some(end) = head_end(&input[at..filled]) {
            let head = &input[at..at + end];
            close = wants_close(head);
            output.extend_from_slice(if close { CLOSE_RESPONSE } else { RESPONSE });
            at += end;
            if close {
                break;
            }
        }
        input.copy_within(at..filled, 0);
        filled -= at;
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        if close {
            return Ok(());
        }
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// HTTP/1.0 closes unless asked to keep alive; HTTP/1.1 closes when asked.
fn wants_close(head: &[u8]) -> bool {
    let first_line = head.split(|&b| b == b'\n').next().unwrap_or(b"");
    let http10 = contains_ci(first_line, b"HTTP/1.0");
    if http10 {
        !contains_ci(head, b"keep-alive")
    } else {
        contains_ci(head, b"connection: close")
    }
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}
