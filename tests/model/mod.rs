//! Shared test code: the reference model of SEMANTICS.md and the check
//! functions that the proptest suites, the fuzz targets and the corpus
//! replay (`tests/fuzz_corpus.rs`) all run.
//!
//! Included by the test files with `mod model;` and by the fuzz crate with
//! `#[path = "../../tests/model/mod.rs"]`.
#![allow(dead_code)]

pub mod cqe;
pub mod executor;
pub mod net;
pub mod ops;
pub mod sem;
pub mod timerq;

/// Reads an input byte by byte; past the end it yields zeros.
pub struct Src<'a> {
    data: &'a [u8],
}

impl<'a> Src<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Src { data }
    }

    /// The next byte, or 0 at the end.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next four bytes as a little-endian number.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Number of open sockets, pipes and anonymous-inode fds (rings, eventfds,
/// signalfds) of this process. Regular files are left out: the test runner
/// opens those on other threads.
pub fn open_fds() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| {
            let t = t.to_string_lossy();
            t.starts_with("socket:") || t.starts_with("pipe:") || t.starts_with("anon_inode:")
        })
        .count()
}
