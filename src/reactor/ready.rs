//! The fd phase's queue of watches and completions waiting for their turn
//! (SEMANTICS.md §1: in the order the kernel reported them).

use super::Ready;

/// The ready queue, first in first out: a `Vec` read from `head` on.
///
/// Not a `VecDeque`: its `push_back` stayed a call of its own in `route`
/// (about 25 instructions per event) and its `pop_front` wraps an index.
/// The queue runs empty before every wait, and then starts again at the
/// front of the same allocation; should it never run empty (a stream of
/// immediates keeps the loop from the fd phase while kernel turns add
/// more), the part already read is dropped before the `Vec` would grow,
/// once it is at least half of it, so the memory stays in proportion to
/// what is queued.
#[derive(Default)]
pub(super) struct ReadyQueue {
    items: Vec<Ready>,
    head: usize,
}

impl ReadyQueue {
    /// `inline(always)`: `route` is large, and with a plain `#[inline]`
    /// this stayed a call there.
    #[inline(always)]
    pub(super) fn push_back(&mut self, ready: Ready) {
        if self.items.len() == self.items.capacity() {
            self.make_room();
        }
        self.items.push(ready);
    }

    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<Ready> {
        let ready = *self.items.get(self.head)?;
        self.head += 1;
        if self.head == self.items.len() {
            self.items.clear();
            self.head = 0;
        }
        Some(ready)
    }

    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.head == self.items.len()
    }

    /// Puts `ready` first (rare: a parked completion going back).
    pub(super) fn push_front(&mut self, ready: Ready) {
        if self.head > 0 {
            self.head -= 1;
            self.items[self.head] = ready;
        } else {
            self.items.insert(0, ready);
        }
    }

    /// Before a push into a full `Vec`: drops the entries already read if
    /// they are at least half of it, or else grows it.
    #[cold]
    #[inline(never)]
    fn make_room(&mut self) {
        if self.head > 0 && self.head * 2 >= self.items.len() {
            self.items.drain(..self.head);
            self.head = 0;
        } else {
            self.items.reserve(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FdId, Ready};
    use super::ReadyQueue;
    use slotmap::KeyData;

    fn fd(n: u64) -> Ready {
        Ready::Fd(FdId::from(KeyData::from_ffi((1 << 32) | n)))
    }

    fn number(r: Ready) -> u64 {
        match r {
            Ready::Fd(id) => slotmap::Key::data(&id).as_ffi() & 0xffff_ffff,
            Ready::Op(..) => unreachable!(),
        }
    }

    /// First in, first out, with `push_front` putting one back first,
    /// across the compaction of what was read and across growth.
    #[test]
    fn fifo_through_compaction_and_growth() {
        let mut q = ReadyQueue::default();
        let mut model = std::collections::VecDeque::new();
        let mut next = 0;
        // Never runs empty: two in, one out, so the read part keeps
        // growing until it is dropped.
        for step in 0..2000u64 {
            for _ in 0..2 {
                q.push_back(fd(next));
                model.push_back(next);
                next += 1;
            }
            if step % 7 == 3 {
                let front = number(q.pop_front().unwrap());
                assert_eq!(Some(front), model.pop_front());
                q.push_front(fd(front));
                model.push_front(front);
            }
            assert_eq!(q.pop_front().map(number), model.pop_front());
            assert!(q.items.len() - q.head == model.len());
            assert!(q.items.capacity() <= 4 * model.len().max(4));
        }
        while let Some(r) = q.pop_front() {
            assert_eq!(Some(number(r)), model.pop_front());
        }
        assert!(model.is_empty());
        assert_eq!((q.items.len(), q.head), (0, 0));
        q.push_front(fd(7));
        assert_eq!(q.pop_front().map(number), Some(7));
        assert!(q.pop_front().is_none());
    }
}
