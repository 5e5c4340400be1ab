//! A pool of receive buffers the kernel picks from: a ring-mapped provided
//! buffer group (`IORING_REGISTER_PBUF_RING`, Linux 5.19).
//!
//! A multishot receive names a buffer group instead of a buffer; each
//! completion says which buffer the kernel filled (`IORING_CQE_F_BUFFER`,
//! the buffer id in the flags' upper 16 bits). The buffer is then the
//! reader's until it is handed back with [`BufPool::recycle`], which is a
//! store into the shared ring, not a syscall.
//!
//! One pool per loop, made on first use and registered for the life of the
//! ring. Its memory is freed only when nothing refers to it any more: the
//! loop and every receive that may hold a buffer keep an `Rc` to it, and an
//! operation that teardown gave up on (and leaked) keeps it forever.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use super::Handle;

/// The buffer group id of the loop's pool (one per ring, so any id will do).
pub(crate) const GROUP: u16 = 0;

/// `IORING_CQE_F_BUFFER`: the completion names a buffer in its upper 16 bits.
const CQE_F_BUFFER: u32 = 1 << 0;
const CQE_BUFFER_SHIFT: u32 = 16;

/// How many buffers a pool has and how long each is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolSize {
    /// A power of two, as the ring requires, at most 32768.
    pub(crate) buffers: u16,
    /// Bytes per buffer.
    pub(crate) buf_len: u32,
}

impl Default for PoolSize {
    /// 256 buffers of a page each: a page is what most socket reads take.
    fn default() -> Self {
        PoolSize {
            buffers: 256,
            buf_len: 4096,
        }
    }
}

impl PoolSize {
    /// The largest pool, in bytes, a loop may ask for.
    const MAX_BYTES: u64 = 1 << 30;

    /// Checks what a builder was given.
    pub(crate) fn validate(self) -> io::Result<PoolSize> {
        let PoolSize { buffers, buf_len } = self;
        let bytes = u64::from(buffers) * u64::from(buf_len);
        if !buffers.is_power_of_two()
            || buffers > 1 << 15
            || buf_len == 0
            || bytes > Self::MAX_BYTES
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "receive buffer pool of {buffers} x {buf_len} bytes: the count must be a \
                     power of two up to 32768, the length at least 1, the total at most 1 GiB"
                ),
            ));
        }
        Ok(self)
    }

    fn ring_layout(self) -> Layout {
        Layout::from_size_align(usize::from(self.buffers) * ENTRY_SIZE, PAGE).expect("ring layout")
    }

    fn bufs_layout(self) -> Layout {
        Layout::from_size_align(usize::from(self.buffers) * self.buf_len as usize, PAGE)
            .expect("buffers layout")
    }
}

/// One `struct io_uring_buf`: addr (u64), len (u32), bid (u16), resv (u16).
const ENTRY_SIZE: usize = 16;
/// The ring's tail is the `resv` field of its first entry.
const TAIL_OFFSET: usize = 14;
const PAGE: usize = 4096;

/// The loop's pool of provided receive buffers.
pub(crate) struct BufPool {
    size: PoolSize,
    /// The shared ring of `size.buffers` entries, page-aligned.
    ring: *mut u8,
    /// `size.buffers` buffers of `size.buf_len` bytes each, buffer `i` at
    /// `i * buf_len`.
    bufs: *mut u8,
    /// Our copy of the ring's tail (the kernel only reads it).
    tail: Cell<u16>,
    /// Buffers in the ring, available to the kernel.
    available: Cell<u16>,
}

impl BufPool {
    /// Allocates the pool and fills the ring with every buffer.
    fn new(size: PoolSize) -> io::Result<BufPool> {
        let (ring_layout, bufs_layout) = (size.ring_layout(), size.bufs_layout());
        // SAFETY: both layouts have a non-zero size (`PoolSize::validate`).
        let (ring, bufs) = unsafe { (alloc_zeroed(ring_layout), alloc_zeroed(bufs_layout)) };
        if ring.is_null() || bufs.is_null() {
            // SAFETY: each pointer is freed only if it was allocated, with its layout.
            unsafe {
                if !ring.is_null() {
                    dealloc(ring, ring_layout);
                }
                if !bufs.is_null() {
                    dealloc(bufs, bufs_layout);
                }
            }
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let pool = BufPool {
            size,
            ring,
            bufs,
            tail: Cell::new(0),
            available: Cell::new(0),
        };
        for bid in 0..size.buffers {
            pool.recycle(bid);
        }
        Ok(pool)
    }

    fn ring_addr(&self) -> u64 {
        self.ring as u64
    }

    /// Bytes per buffer.
    pub(crate) fn buf_len(&self) -> usize {
        self.size.buf_len as usize
    }

    /// The buffer a completion's flags name, if they name one of the pool's.
    pub(crate) fn buffer_id(&self, flags: u32) -> Option<u16> {
        if flags & CQE_F_BUFFER == 0 {
            return None;
        }
        let bid = (flags >> CQE_BUFFER_SHIFT) as u16;
        (bid < self.size.buffers).then_some(bid)
    }

    /// Buffers the kernel can still fill.
    pub(crate) fn available(&self) -> u16 {
        self.available.get()
    }

    /// The buffer a completion names, if it names one; it is now the
    /// caller's, until [`BufPool::recycle`]. The loop takes the buffers of
    /// the completions it queues for a stream as it reaps them, so that
    /// [`BufPool::available`] is right while they wait unread.
    pub(crate) fn take(&self, flags: u32) -> Option<u16> {
        let bid = self.buffer_id(flags)?;
        self.available.set(self.available.get().saturating_sub(1));
        Some(bid)
    }

    /// The first `len` bytes of buffer `bid`, which the caller took from a
    /// completion and has not recycled.
    pub(crate) fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let buf_len = self.buf_len();
        assert!(
            bid < self.size.buffers && len <= buf_len,
            "buffer {bid} length {len}"
        );
        // SAFETY: in bounds (asserted); the kernel wrote `len` bytes into a
        // buffer it then handed over and no longer touches until recycled.
        unsafe { std::slice::from_raw_parts(self.bufs.add(usize::from(bid) * buf_len), len) }
    }

    /// Hands buffer `bid` back to the kernel.
    pub(crate) fn recycle(&self, bid: u16) {
        assert!(bid < self.size.buffers, "buffer {bid}");
        let tail = self.tail.get();
        // `buffers` is a power of two: the mask keeps `slot` below it.
        let slot = usize::from(tail & (self.size.buffers - 1));
        // SAFETY: `slot` < buffers, so the entry is inside the ring; the
        // kernel reads entries only below the tail published below, so it
        // does not look at this one yet. The buffer is ours to give.
        unsafe {
            let entry = self.ring.add(slot * ENTRY_SIZE);
            entry
                .cast::<u64>()
                .write(self.bufs.add(usize::from(bid) * self.buf_len()) as u64);
            entry.add(8).cast::<u32>().write(self.size.buf_len);
            entry.add(12).cast::<u16>().write(bid);
        }
        let tail = tail.wrapping_add(1);
        // SAFETY: the tail is a naturally aligned u16 inside the ring (offset
        // 14 of a page-aligned allocation), shared with the kernel, which
        // only reads it: an atomic store with Release publishes the entry
        // written above before the new tail.
        unsafe { &*self.ring.add(TAIL_OFFSET).cast::<AtomicU16>() }.store(tail, Ordering::Release);
        self.tail.set(tail);
        self.available.set(self.available.get() + 1);
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; nothing of the
        // kernel's refers to them any more (see the module docs).
        unsafe {
            dealloc(self.ring, self.size.ring_layout());
            dealloc(self.bufs, self.size.bufs_layout());
        }
    }
}

impl Handle {
    /// The loop's buffer pool, registered with the ring on first use; `None`
    /// if the kernel cannot provide buffers from a ring (before 5.19).
    pub(crate) fn buf_pool(&self) -> Option<Rc<BufPool>> {
        self.with(|st| {
            if let Some(pool) = &st.buf_pool {
                return pool.clone();
            }
            let size = st.buf_pool_size;
            let pool = BufPool::new(size).ok().and_then(|pool| {
                // SAFETY: the ring memory is page-aligned, holds
                // `size.buffers` entries and lives as long as the pool, which
                // the loop keeps until the ring is closed (and every receive
                // using it keeps too).
                let registered = unsafe {
                    st.ring
                        .register_buf_ring(pool.ring_addr(), size.buffers, GROUP)
                };
                registered.ok().map(|()| Rc::new(pool))
            });
            st.buf_pool = Some(pool.clone());
            pool
        })
        .ok()
        .flatten()
    }

    /// Test hook: how many buffers of the loop's pool the kernel can fill
    /// now; `None` until a stream first enables multishot receives.
    #[doc(hidden)]
    pub fn buf_pool_available(&self) -> Option<u16> {
        self.with(|st| match &st.buf_pool {
            Some(Some(pool)) => Some(pool.available()),
            _ => None,
        })
        .ok()
        .flatten()
    }
}
