//! The crate's error type: every failure says what happened and what to do.

use std::fmt;
use std::io;

/// Why a ringloop call failed.
///
/// Each variant's message names the cause and, where there is one, the fix.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// io_uring cannot be used on this machine (disabled by sysctl, blocked by
    /// a seccomp profile, missing from the kernel, or short of locked memory).
    Unavailable {
        /// What the kernel said.
        source: io::Error,
        /// The likely cause and fix, in words.
        hint: &'static str,
    },
    /// The kernel lacks a feature ringloop requires.
    KernelTooOld {
        /// The running kernel's release string (`uname -r`).
        release: String,
        /// The missing feature.
        missing: &'static str,
    },
    /// The fd given is not open.
    BadFd(i32),
    /// The event (watch, timer, immediate, signal, operation) no longer exists:
    /// it was removed or already fired. Ids are only meaningful on the loop
    /// that issued them: one from another loop is not detected and may name
    /// an unrelated event there.
    NotFound,
    /// `run_once` was called from inside a handler and nesting was not allowed.
    Nested,
    /// The loop was asked never to block and had nothing to run.
    WouldBlock,
    /// The loop has been dropped (or is being torn down).
    LoopGone,
    /// The loop was created before a `fork()`; the child must create its own.
    Forked,
    /// A duration or deadline too far in the future to represent.
    DeadlineOverflow,
    /// A signal number that cannot be watched (`SIGKILL`, `SIGSTOP`, out of range).
    BadSignal(i32),
    /// Any other OS error.
    Io(io::Error),
}

/// `Result` with ringloop's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable { source, hint } => {
                write!(f, "io_uring is unavailable ({source}): {hint}")
            }
            Error::KernelTooOld { release, missing } => write!(
                f,
                "kernel {release} lacks {missing}, which ringloop requires; \
                 run on Linux 6.1 or newer"
            ),
            Error::BadFd(fd) => write!(f, "fd {fd} is not open; register an fd you own"),
            Error::NotFound => write!(
                f,
                "no such event: it was removed or already ran; use ids only on the loop that issued them"
            ),
            Error::Nested => write!(
                f,
                "the loop was run from inside one of its handlers; \
                 return from the handler, or allow nesting explicitly"
            ),
            Error::WouldBlock => write!(f, "nothing was ready and the loop may not block"),
            Error::LoopGone => write!(f, "the event loop has been dropped"),
            Error::Forked => write!(
                f,
                "this loop belongs to the parent process; create a new loop after fork()"
            ),
            Error::DeadlineOverflow => {
                write!(f, "the deadline is too far in the future to represent")
            }
            Error::BadSignal(n) => write!(f, "signal {n} cannot be watched"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Unavailable { source, .. } | Error::Io(source) => Some(source),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Io(inner) => return io::Error::new(inner.kind(), e),
            Error::Unavailable { .. } | Error::KernelTooOld { .. } => io::ErrorKind::Unsupported,
            Error::BadFd(_) | Error::BadSignal(_) | Error::DeadlineOverflow => {
                io::ErrorKind::InvalidInput
            }
            Error::NotFound => io::ErrorKind::NotFound,
            Error::WouldBlock => io::ErrorKind::WouldBlock,
            Error::Nested | Error::LoopGone | Error::Forked => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
