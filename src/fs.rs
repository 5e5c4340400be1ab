//! Files through the ring: open, positional read and write, fsync
//! (`IORING_OP_OPENAT`, `READ`, `WRITE`, `FSYNC`), as Samba's `vfs_io_uring`
//! does for pread, pwrite and fsync.
//!
//! Regular files are not pollable; io_uring runs these operations in its
//! worker threads when they would block, so the loop never blocks on disk.
//!
//! ```
//! use ringloop::{fs::File, rt};
//! let path = std::env::temp_dir().join(format!("ringloop-fs-doc-{}", std::process::id()));
//! rt::block_on(async {
//!     let f = File::create(&path).await.unwrap();
//!     f.write_at(b"hello".to_vec(), 0).await.0.unwrap();
//!     f.sync_all().await.unwrap();
//!     let f = File::open(&path).await.unwrap();
//!     let (r, buf) = f.read_at(Vec::with_capacity(16), 1).await;
//!     assert_eq!((r.unwrap(), &buf[..]), (4, &b"ello"[..]));
//! });
//! std::fs::remove_file(&path).unwrap();
//! ```

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use io_uring::{opcode, types};

use crate::net::{extend, no_spare_capacity};
use crate::op::{Op, Orphan};

/// An open file whose I/O goes through io_uring. The fd is closed when the
/// `File` and every operation using it are gone.
///
/// Each operation is submitted on the loop of the runtime whose task first
/// polls it, so a `File` may be used under any runtime of the thread. One
/// in flight under an idle runtime and awaited under another is cancelled
/// there: it fails with [`io::ErrorKind::Interrupted`] having done nothing,
/// or returns what it had done (a read or write the kernel was already
/// running on a worker thread is waited for). One awaited by another
/// executor while no runtime of the thread runs `block_on` is cancelled
/// the same way, and fails with an error that says no runtime runs the
/// wait (see [the `net` module docs](crate::net)).
pub struct File {
    fd: Rc<OwnedFd>,
}

impl File {
    /// Opens an existing file read-only.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<File> {
        File::open_with(path, libc::O_RDONLY, 0).await
    }

    /// Creates (or truncates) a file for writing, mode 0o666 before umask.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<File> {
        File::open_with(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o666).await
    }

    /// Opens with `open(2)` flags (`O_CLOEXEC` is always added) and mode.
    /// If the future is dropped first, a file it opened anyway is closed.
    pub async fn open_with(path: impl AsRef<Path>, flags: i32, mode: u32) -> io::Result<File> {
        let path = CString::new(path.as_ref().as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        let entry = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .flags(flags | libc::O_CLOEXEC)
            .mode(mode)
            .build();
        // SAFETY: the CString's heap buffer is owned by the operation.
        let (r, _path) = unsafe { Op::submit(entry, path, Orphan::CloseFd) }
            .result()
            .await;
        let fd = r? as RawFd;
        // SAFETY: the kernel just created this fd for us.
        Ok(File {
            fd: Rc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
    }

    /// Wraps a `std` file.
    pub fn from_std(file: std::fs::File) -> File {
        File {
            fd: Rc::new(OwnedFd::from(file)),
        }
    }

    /// Reads at `offset` into `buf`'s spare capacity (`len..capacity`),
    /// extending its length; `Ok(0)` means end of file. An offset above
    /// `i64::MAX` is `EINVAL`, as for `pread`.
    pub async fn read_at(&self, mut buf: Vec<u8>, offset: u64) -> (io::Result<usize>, Vec<u8>) {
        if let Err(e) = check_offset(offset) {
            return (Err(e), buf);
        }
        let spare = buf.capacity() - buf.len();
        if spare == 0 {
            return (Err(no_spare_capacity()), buf);
        }
        let len = u32::try_from(spare).unwrap_or(u32::MAX);
        // SAFETY: `len` bytes past `buf.len()` are allocated.
        let ptr = unsafe { buf.as_mut_ptr().add(buf.len()) };
        let entry = opcode::Read::new(types::Fd(self.fd.as_raw_fd()), ptr, len)
            .offset(offset)
            .build();
        // SAFETY: the Vec's heap buffer and the fd are owned by the operation.
        let (r, (mut buf, _fd)) =
            unsafe { Op::submit(entry, (buf, self.fd.clone()), Orphan::Drop) }
                .result()
                .await;
        (r.map(|n| extend(&mut buf, n)), buf)
    }

    /// Writes `buf[..len]` at `offset` once; returns how many bytes were
    /// written. An offset above `i64::MAX` is `EINVAL`, as for `pwrite`.
    pub async fn write_at(&self, buf: Vec<u8>, offset: u64) -> (io::Result<usize>, Vec<u8>) {
        self.write_from(buf, 0, offset).await
    }

    /// Writes `buf[from..]` at `offset` once.
    async fn write_from(
        &self,
        buf: Vec<u8>,
        from: usize,
        offset: u64,
    ) -> (io::Result<usize>, Vec<u8>) {
        if let Err(e) = check_offset(offset) {
            return (Err(e), buf);
        }
        let rest = &buf[from.min(buf.len())..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let entry = opcode::Write::new(types::Fd(self.fd.as_raw_fd()), rest.as_ptr(), len)
            .offset(offset)
            .build();
        // SAFETY: as in `read_at`.
        let (r, (buf, _fd)) = unsafe { Op::submit(entry, (buf, self.fd.clone()), Orphan::Drop) }
            .result()
            .await;
        (r.map(|n| n as usize), buf)
    }

    /// Writes all of `buf[..len]` starting at `offset`. An offset above
    /// `i64::MAX` is `EINVAL`, as for `pwrite`.
    pub async fn write_all_at(&self, mut buf: Vec<u8>, offset: u64) -> (io::Result<()>, Vec<u8>) {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset.saturating_add(done as u64);
            let (r, b) = self.write_from(buf, done, at).await;
            buf = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Flushes data and metadata to the device (`fsync`).
    pub async fn sync_all(&self) -> io::Result<()> {
        self.fsync(types::FsyncFlags::empty()).await
    }

    /// Flushes data, and only the metadata needed to read it (`fdatasync`).
    pub async fn sync_data(&self) -> io::Result<()> {
        self.fsync(types::FsyncFlags::DATASYNC).await
    }

    async fn fsync(&self, flags: types::FsyncFlags) -> io::Result<()> {
        let entry = opcode::Fsync::new(types::Fd(self.fd.as_raw_fd()))
            .flags(flags)
            .build();
        // SAFETY: FSYNC points at no memory; the fd is owned by the operation.
        let (r, _fd) = unsafe { Op::submit(entry, self.fd.clone(), Orphan::Drop) }
            .result()
            .await;
        r.map(drop)
    }
}

impl AsFd for File {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

/// io_uring reads an offset of -1 (`u64::MAX`) as "at the file position,
/// and move it" and any other negative one as an error or worse; `pread` and
/// `pwrite` refuse every offset that is negative as an `off_t`.
fn check_offset(offset: u64) -> io::Result<()> {
    if offset > i64::MAX as u64 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}
