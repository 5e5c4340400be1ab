//! Copies a file with io_uring reads and writes at explicit offsets.
//!
//! ```text
//! cargo run --release --example file_copy -- SRC DST
//! ```
//!
//! Regular files are always "ready", so readiness watches are no use for
//! them; instead this submits `IORING_OP_READ` and `IORING_OP_WRITE`
//! through [`Handle::submit`] and continues in their completion callbacks.
//! Four 256 KiB chunks are in flight at once: each chunk is read at its
//! offset, then written at the same offset in DST, then the next chunk is
//! claimed. Short reads and short writes are continued where they stopped.
//! At the end an `IORING_OP_FSYNC` makes DST durable.
//!
//! The buffers are owned: each chunk's `Vec` moves into the callback of the
//! operation that uses it, so it cannot be freed or reused while the kernel
//! may still write into it. This is what the `unsafe` on `submit` asks for.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::rc::Rc;
use std::time::Instant;

use io_uring::{opcode, types};
use ringloop::{Completion, EventLoop, Handle};

const CHUNK: usize = 256 * 1024;
const IN_FLIGHT: usize = 4;

fn main() {
    if let Err(e) = run() {
        eprintln!("file_copy: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src_path, dst_path] = args.as_slice() else {
        return Err("usage: file_copy SRC DST".into());
    };
    // Non-blocking, so that a FIFO does not block the open waiting for a
    // writer before the check below can refuse it; regular files ignore it.
    let src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(src_path)
        .map_err(|e| format!("cannot open {src_path}: {e}"))?;
    let meta = src.metadata()?;
    if !meta.is_file() {
        return Err(format!("{src_path} is not a regular file").into());
    }
    // The same inode under any name (a symlink, a hard link, a bind mount):
    // truncating DST would empty SRC.
    if let Ok(dst_meta) = std::fs::metadata(dst_path)
        && (dst_meta.dev(), dst_meta.ino()) == (meta.dev(), meta.ino())
    {
        return Err("SRC and DST are the same file".into());
    }
    let dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(meta.permissions().mode())
        .open(dst_path)
        .map_err(|e| format!("cannot create {dst_path}: {e}"))?;

    let lp = EventLoop::new()?;
    let started = Instant::now();
    let job = Rc::new(RefCell::new(Job {
        src,
        dst,
        // A size of 0 may be a file whose size the kernel does not know
        // (`/proc`, `/sys`): read until end of file instead.
        size: if meta.len() == 0 {
            u64::MAX
        } else {
            meta.len()
        },
        next_offset: 0,
        active: 0,
        copied: 0,
        error: None,
        synced: false,
    }));
    for _ in 0..IN_FLIGHT {
        next_chunk(&lp, &job, Vec::new());
    }
    lp.run()?;

    let job = job.borrow();
    if let Some(e) = &job.error {
        return Err(format!("copy failed: {e}").into());
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "copied {} bytes in {:.1} ms ({:.0} MiB/s, {} operations of up to {} KiB in flight){}",
        job.copied,
        secs * 1e3,
        job.copied as f64 / (1 << 20) as f64 / secs.max(1e-9),
        IN_FLIGHT,
        CHUNK / 1024,
        if job.synced { ", fsynced" } else { "" }
    );
    Ok(())
}

struct Job {
    src: File,
    dst: File,
    /// Bytes to copy (SRC's size when opened, or unknown: `u64::MAX`; less
    /// once a read finds the end of the file).
    size: u64,
    /// The first byte no chunk has claimed yet.
    next_offset: u64,
    /// Chunks being read or written.
    active: usize,
    copied: u64,
    error: Option<io::Error>,
    synced: bool,
}

/// One chunk: `buf[..filled]` was read from `offset`, `buf[..written]` is
/// already written.
struct Chunk {
    offset: u64,
    buf: Vec<u8>,
    filled: usize,
    written: usize,
}

type Shared = Rc<RefCell<Job>>;

/// Claims the next chunk and starts reading it, reusing `buf`; when nothing
/// is left and this was the last active chunk, starts the final fsync.
fn next_chunk(lp: &Handle, job: &Shared, mut buf: Vec<u8>) {
    let mut j = job.borrow_mut();
    if j.error.is_some() || j.next_offset >= j.size {
        let last = j.active == 0;
        drop(j);
        if last {
            fsync(lp, job);
        }
        return;
    }
    let len = CHUNK.min((j.size - j.next_offset) as usize);
    buf.resize(len, 0);
    let chunk = Chunk {
        offset: j.next_offset,
        buf,
        filled: 0,
        written: 0,
    };
    j.next_offset += len as u64;
    j.active += 1;
    drop(j);
    read(lp, job.clone(), chunk);
}

fn read(lp: &Handle, job: Shared, mut chunk: Chunk) {
    let fd = job.borrow().src.as_raw_fd();
    let rest = &mut chunk.buf[chunk.filled..];
    let entry = opcode::Read::new(types::Fd(fd), rest.as_mut_ptr(), rest.len() as u32)
        .offset(chunk.offset + chunk.filled as u64)
        .build();
    let j = job.clone();
    // SAFETY: the buffer (inside `chunk`) and the file (inside `job`) move
    // into the callback, which runs only once the kernel is done with them.
    let submitted = unsafe {
        lp.submit(entry, move |lp, c: Completion| match c.result() {
            Ok(0) => {
                // SRC ended early (it shrank): copy what we have, claim no more.
                let mut jb = j.borrow_mut();
                jb.size = jb.size.min(chunk.offset + chunk.filled as u64);
                drop(jb);
                write(lp, j, chunk);
            }
            Ok(n) => {
                chunk.filled += n as usize;
                if chunk.filled < chunk.buf.len() {
                    read(lp, j, chunk);
                } else {
                    write(lp, j, chunk);
                }
            }
            Err(e) => fail(lp, &j, e),
        })
    };
    if let Err(e) = submitted {
        fail(lp, &job, e.into());
    }
}

fn write(lp: &Handle, job: Shared, mut chunk: Chunk) {
    if chunk.written == chunk.filled {
        job.borrow_mut().active -= 1;
        job.borrow_mut().copied += chunk.filled as u64;
        next_chunk(lp, &job, chunk.buf);
        return;
    }
    let fd = job.borrow().dst.as_raw_fd();
    let rest = &chunk.buf[chunk.written..chunk.filled];
    let entry = opcode::Write::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
        .offset(chunk.offset + chunk.written as u64)
        .build();
    let j = job.clone();
    // SAFETY: as in `read`: buffer and file live in the callback.
    let submitted = unsafe {
        lp.submit(entry, move |lp, c: Completion| match c.result() {
            Ok(0) => fail(lp, &j, io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                chunk.written += n as usize;
                write(lp, j, chunk);
            }
            Err(e) => fail(lp, &j, e),
        })
    };
    if let Err(e) = submitted {
        fail(lp, &job, e.into());
    }
}

/// Records the first error; the other chunks finish their current operation
/// and claim no more.
fn fail(lp: &Handle, job: &Shared, e: io::Error) {
    let mut j = job.borrow_mut();
    j.active -= 1;
    j.error.get_or_insert(e);
    drop(j);
    next_chunk(lp, job, Vec::new());
}

fn fsync(lp: &Handle, job: &Shared) {
    let mut j = job.borrow_mut();
    if j.error.is_some() || j.synced {
        return;
    }
    j.synced = true;
    let entry = opcode::Fsync::new(types::Fd(j.dst.as_raw_fd())).build();
    drop(j);
    let jc = job.clone();
    // SAFETY: FSYNC points at no memory; the file lives in `job`, which the
    // callback keeps alive.
    let submitted = unsafe {
        lp.submit(entry, move |_, c| {
            if let Err(e) = c.result() {
                let mut jb = jc.borrow_mut();
                jb.synced = false;
                jb.error.get_or_insert(e);
            }
        })
    };
    if let Err(e) = submitted {
        let mut j = job.borrow_mut();
        j.synced = false;
        j.error.get_or_insert(e.into());
    }
}
