//! Thin, checked wrappers over the few raw syscalls the crate needs beyond
//! what the `io-uring` crate exposes. Each `unsafe` block is one syscall.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `IORING_ENTER_GETEVENTS`.
pub const ENTER_GETEVENTS: u32 = 1;
/// `IORING_ENTER_EXT_ARG`.
pub const ENTER_EXT_ARG: u32 = 8;
/// `IORING_ENTER_REGISTERED_RING`.
pub const ENTER_REGISTERED_RING: u32 = 16;
/// `IORING_REGISTER_RING_FDS`.
const REGISTER_RING_FDS: libc::c_uint = 20;

/// `struct io_uring_getevents_arg` (5.11+): the wait timeout passed with EXT_ARG.
#[repr(C)]
pub struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// `struct __kernel_timespec`.
#[repr(C)]
pub struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

impl KernelTimespec {
    /// A relative timeout; saturates at about 292 years, which is "forever" in practice.
    pub fn from_duration(d: Duration) -> Self {
        KernelTimespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        }
    }
}

/// Calls `io_uring_enter`, with an optional relative timeout through EXT_ARG.
///
/// `ring` is the ring fd, or its registered index when `flags` has
/// [`ENTER_REGISTERED_RING`].
pub fn io_uring_enter(
    ring: RawFd,
    to_submit: u32,
    min_complete: u32,
    mut flags: u32,
    timeout: Option<&KernelTimespec>,
) -> io::Result<u32> {
    let arg;
    let (argp, argsz): (*const libc::c_void, usize) = match timeout {
        Some(ts) => {
            arg = GeteventsArg {
                sigmask: 0,
                sigmask_sz: 0,
                min_wait_usec: 0,
                ts: ts as *const KernelTimespec as u64,
            };
            flags |= ENTER_EXT_ARG;
            (
                (&arg as *const GeteventsArg).cast(),
                std::mem::size_of::<GeteventsArg>(),
            )
        }
        None => (std::ptr::null(), 0),
    };
    // SAFETY: the arguments follow io_uring_enter(2); `arg` and the timespec it
    // points to live on this stack frame for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            ring,
            to_submit,
            min_complete,
            flags,
            argp,
            argsz,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as u32)
    }
}

/// Registers the ring fd with itself (`IORING_REGISTER_RING_FDS`, 5.18+) and
/// returns the index to pass with [`ENTER_REGISTERED_RING`].
pub fn register_ring_fd(ring: RawFd) -> io::Result<RawFd> {
    #[repr(C)]
    struct RsrcUpdate {
        offset: u32,
        resv: u32,
        data: u64,
    }
    let mut up = RsrcUpdate {
        offset: u32::MAX,
        resv: 0,
        data: ring as u64,
    };
    // SAFETY: one io_uring_rsrc_update the kernel reads and writes back; it
    // outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring,
            REGISTER_RING_FDS,
            &mut up as *mut RsrcUpdate,
            1,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(up.offset as RawFd)
    }
}

/// Whether `fd` is an open descriptor of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor table.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// A non-blocking, close-on-exec eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we own the returned fd.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter.
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64. EAGAIN (counter saturated) still
    // leaves the fd readable, so the wake is not lost.
    unsafe {
        libc::write(fd, (&one as *const u64).cast(), 8);
    }
}

/// Resets an eventfd's counter to zero.
pub fn eventfd_drain(fd: RawFd) {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64; EAGAIN just means already zero.
    unsafe {
        libc::read(fd, (&mut value as *mut u64).cast(), 8);
    }
}

/// The running kernel's release string, as `uname -r` prints it.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; uname fills it in.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static FORK_HOOK: Once = Once::new();

extern "C" fn bump_fork_generation() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// A counter that changes in every child after `fork()`. Comparing it is a
/// load, where `getpid()` would be a syscall on every loop call.
pub fn fork_generation() -> u64 {
    FORK_HOOK.call_once(|| {
        // SAFETY: registers a plain extern "C" fn that only touches an atomic,
        // which is async-signal-safe as a fork child handler requires.
        unsafe {
            libc::pthread_atfork(None, None, Some(bump_fork_generation));
        }
    });
    FORK_GENERATION.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// traps.md, tokio#5021 (timers late by a millisecond): the wait
    /// timeout reaches the kernel to the nanosecond, never rounded to
    /// milliseconds.
    #[test]
    fn timeouts_keep_their_nanoseconds() {
        let ts = KernelTimespec::from_duration(Duration::new(2, 1_100_007));
        assert_eq!((ts.tv_sec, ts.tv_nsec), (2, 1_100_007));
        let forever = KernelTimespec::from_duration(Duration::MAX);
        assert_eq!((forever.tv_sec, forever.tv_nsec), (i64::MAX, 999_999_999));
    }
}
