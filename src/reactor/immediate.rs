//! The immediate queue: FIFO, where scheduling again moves an entry to the tail.
//!
//! Each schedule stamps the entry with a fresh sequence number and appends
//! `(id, seq)`; entries whose stamp no longer matches are skipped on pop, so
//! reschedule and cancel are O(1).
//!
//! Entries that can never be rescheduled or cancelled (closures from other
//! threads) need no id: a batch of them waits beside the FIFO and takes one
//! place in it, a marker, which saves a slot-map insert and remove per entry
//! and keeps their order among the named ones. The FIFO stays a queue of
//! 16-byte pairs, so named immediates pay nothing for batches.

use std::collections::VecDeque;

use slotmap::{Key, SlotMap};

slotmap::new_key_type! {
    /// Names an immediate of one loop. Stale ids (ran or cancelled) are rejected.
    pub struct ImmediateId;
}

/// The stamp of a batch's marker in the FIFO; named entries' stamps start at 1.
const BATCH: u64 = 0;

/// The largest buffer of a spent batch kept for the next one, in bytes; a
/// bigger one is freed (for the loop's boxed closures, 1 Mi of them).
const MAX_SPENT_BYTES: usize = 16 << 20;

/// Scheduled immediates in FIFO order; generic over the payload.
pub struct ImmediateQueue<T> {
    entries: SlotMap<ImmediateId, (u64, T)>,
    fifo: VecDeque<(ImmediateId, u64)>,
    /// The batches whose markers are in `fifo`, in the same order; none is
    /// empty.
    batches: VecDeque<std::vec::IntoIter<T>>,
    /// Entries left in the batches (those have no slot-map entry to count).
    anonymous: usize,
    /// The allocation of the last batch run to its end, unless it was
    /// bigger than [`MAX_SPENT_BYTES`], for [`ImmediateQueue::take_spent`].
    spent: Option<Vec<T>>,
    next_seq: u64,
}

impl<T> Default for ImmediateQueue<T> {
    fn default() -> Self {
        ImmediateQueue {
            entries: SlotMap::with_key(),
            fifo: VecDeque::new(),
            batches: VecDeque::new(),
            anonymous: 0,
            spent: None,
            next_seq: 0,
        }
    }
}

impl<T> ImmediateQueue<T> {
    /// Schedules a new immediate at the tail.
    pub fn push(&mut self, payload: T) -> ImmediateId {
        self.next_seq += 1;
        let seq = self.next_seq;
        let id = self.entries.insert((seq, payload));
        self.fifo.push_back((id, seq));
        id
    }

    /// Schedules `batch` at the tail, in order, at the cost of one push.
    /// Its entries have no ids, so they cannot be rescheduled or cancelled.
    pub fn push_batch(&mut self, batch: Vec<T>) {
        if !batch.is_empty() {
            self.anonymous += batch.len();
            self.batches.push_back(batch.into_iter());
            self.fifo.push_back((ImmediateId::null(), BATCH));
        }
    }

    /// Moves a scheduled immediate to the tail.
    pub fn reschedule(&mut self, id: ImmediateId) -> bool {
        self.next_seq += 1;
        let seq = self.next_seq;
        let Some(entry) = self.entries.get_mut(id) else {
            return false;
        };
        entry.0 = seq;
        self.fifo.push_back((id, seq));
        self.compact();
        true
    }

    /// Unschedules an immediate, returning its payload.
    pub fn cancel(&mut self, id: ImmediateId) -> Option<T> {
        let payload = self.entries.remove(id).map(|(_, p)| p);
        self.compact();
        payload
    }

    /// Removes and returns the head.
    ///
    /// Inlined for the empty check alone: the loop asks twice per waiting
    /// iteration, and the queue is usually empty.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.fifo.is_empty() {
            return None;
        }
        self.pop_nonempty()
    }

    /// `pop` past its empty check: skips places whose entry was cancelled
    /// or moved by a reschedule (their stamps no longer match).
    fn pop_nonempty(&mut self) -> Option<T> {
        while let Some(&(id, seq)) = self.fifo.front() {
            if seq == BATCH {
                return self.pop_batched();
            }
            self.fifo.pop_front();
            if self.entries.get(id).is_some_and(|e| e.0 == seq) {
                return self.entries.remove(id).map(|(_, p)| p);
            }
        }
        None
    }

    /// The next entry of the head batch, whose marker heads the FIFO: the
    /// marker stays until the batch has run to its end.
    fn pop_batched(&mut self) -> Option<T> {
        let Some(batch) = self.batches.front_mut() else {
            // No batch for the marker (cannot happen: none is empty).
            self.fifo.pop_front();
            return None;
        };
        let payload = batch.next();
        if batch.len() == 0 {
            // Collecting a `vec::IntoIter` through `map` reuses its buffer
            // in place; there is nothing left to map. (Without the `map`,
            // collecting an exhausted `IntoIter` frees the buffer.)
            #[allow(clippy::map_identity)]
            let spent = self
                .batches
                .pop_front()
                .map(|spent| spent.map(|entry| entry).collect::<Vec<T>>());
            self.spent = spent.filter(|spent| spent.capacity() * size_of::<T>() <= MAX_SPENT_BYTES);
            self.fifo.pop_front();
        }
        self.anonymous -= 1;
        payload
    }

    /// The empty buffer of the last batch that ran to its end, if not
    /// taken yet: the next batch can be gathered in it instead of growing a
    /// new one from nothing.
    pub fn take_spent(&mut self) -> Option<Vec<T>> {
        self.spent.take()
    }

    /// The capacity of the spent batch's buffer (0 if none is kept).
    #[cfg(test)]
    pub fn spent_capacity(&self) -> usize {
        self.spent.as_ref().map_or(0, Vec::capacity)
    }

    /// Number of scheduled immediates.
    pub fn len(&self) -> usize {
        self.entries.len() + self.anonymous
    }

    /// Whether none is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes everything, returning the payloads.
    pub fn drain(&mut self) -> Vec<T> {
        let mut all = Vec::with_capacity(self.len());
        self.fifo.clear();
        self.anonymous = 0;
        all.extend(self.batches.drain(..).flatten());
        all.extend(self.entries.drain().map(|(_, (_, p))| p));
        all
    }

    /// Drops stale stamps once they outnumber live entries, bounding memory
    /// when one immediate is rescheduled over and over.
    fn compact(&mut self) {
        if self.fifo.len() > 2 * self.len() + 16 {
            let entries = &self.entries;
            self.fifo
                .retain(|&(id, seq)| seq == BATCH || entries.get(id).is_some_and(|e| e.0 == seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reschedule_moves_to_tail_and_runs_once() {
        let mut q = ImmediateQueue::default();
        let a = q.push('a');
        q.push('b');
        assert!(q.reschedule(a));
        let order: Vec<char> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ['b', 'a']);
    }

    #[test]
    fn cancelled_never_pops() {
        let mut q = ImmediateQueue::default();
        let a = q.push(1);
        assert_eq!(q.cancel(a), Some(1));
        assert!(q.pop().is_none());
        assert!(!q.reschedule(a));
    }

    #[test]
    fn batches_keep_their_place() {
        let mut q = ImmediateQueue::default();
        let a = q.push('a');
        q.push_batch(vec!['x', 'y']);
        let b = q.push('b');
        q.push_batch(Vec::new());
        q.push_batch(vec!['z']);
        assert_eq!(q.len(), 5);
        assert!(q.reschedule(a));
        assert_eq!(q.cancel(b), Some('b'));
        assert_eq!(q.len(), 4);
        let order: Vec<char> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ['x', 'y', 'z', 'a']);
        assert!(q.is_empty());
    }

    #[test]
    fn a_spent_batch_hands_back_its_buffer() {
        let mut q = ImmediateQueue::default();
        let mut batch: Vec<u64> = Vec::with_capacity(100);
        batch.extend([1, 2]);
        let buffer = batch.as_ptr();
        q.push_batch(batch);
        assert_eq!(q.pop(), Some(1));
        // Not spent while an entry is left.
        assert!(q.take_spent().is_none());
        assert_eq!(q.pop(), Some(2));
        let spent = q.take_spent().expect("the batch ran to its end");
        assert!(spent.is_empty());
        assert_eq!(spent.as_ptr(), buffer);
        assert!(spent.capacity() >= 100);
        assert!(q.take_spent().is_none());
    }

    #[test]
    fn a_spent_batch_over_the_bound_is_not_kept() {
        let mut q = ImmediateQueue::default();
        // Reserved, never touched: one entry in a buffer past the bound.
        let mut batch: Vec<[u8; 4096]> = Vec::with_capacity(MAX_SPENT_BYTES / 4096 + 1);
        batch.push([7; 4096]);
        q.push_batch(batch);
        assert_eq!(q.pop().map(|entry| entry[0]), Some(7));
        assert!(q.take_spent().is_none());
    }

    #[test]
    fn compaction_keeps_batches() {
        let mut q = ImmediateQueue::default();
        q.push_batch(vec![1, 2]);
        let a = q.push(3);
        for _ in 0..100 {
            assert!(q.reschedule(a));
        }
        // Compaction ran: the stale stamps are gone, the batch is not.
        assert!(q.fifo.len() < 20);
        let order: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [1, 2, 3]);
    }

    #[test]
    fn drain_returns_batches_too() {
        let mut q = ImmediateQueue::default();
        q.push(1);
        q.push_batch(vec![2, 3]);
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), Some(2));
        q.push(4);
        let mut all = q.drain();
        all.sort();
        assert_eq!(all, [3, 4]);
        assert!(q.is_empty());
        assert!(q.pop().is_none());
    }

    #[derive(Debug, Clone)]
    enum Step {
        Push,
        PushBatch(usize),
        Reschedule(usize),
        Cancel(usize),
        Pop,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Step::Push),
            (0..4usize).prop_map(Step::PushBatch),
            (0..8usize).prop_map(Step::Reschedule),
            (0..8usize).prop_map(Step::Cancel),
            Just(Step::Pop),
        ]
    }

    proptest::proptest! {
        /// Against a plain list: pop order, len and which ids still work,
        /// with compaction kicking in (rescheduling one entry over and over).
        #[test]
        fn matches_a_list(steps in proptest::collection::vec(step(), 0..200)) {
            let mut q = ImmediateQueue::default();
            let mut model: Vec<(Option<usize>, u32)> = Vec::new();
            let mut ids: Vec<ImmediateId> = Vec::new();
            let mut next = 0u32;
            for s in steps {
                match s {
                    Step::Push => {
                        ids.push(q.push(next));
                        model.push((Some(ids.len() - 1), next));
                        next += 1;
                    }
                    Step::PushBatch(n) => {
                        let batch: Vec<u32> = (next..next + n as u32).collect();
                        model.extend(batch.iter().map(|&x| (None, x)));
                        next += n as u32;
                        q.push_batch(batch);
                    }
                    Step::Reschedule(k) => {
                        let Some(&id) = ids.get(k) else { continue };
                        let at = model.iter().position(|e| e.0 == Some(k));
                        proptest::prop_assert_eq!(q.reschedule(id), at.is_some());
                        if let Some(at) = at {
                            let e = model.remove(at);
                            model.push(e);
                        }
                    }
                    Step::Cancel(k) => {
                        let Some(&id) = ids.get(k) else { continue };
                        let at = model.iter().position(|e| e.0 == Some(k));
                        let want = at.map(|at| model.remove(at).1);
                        proptest::prop_assert_eq!(q.cancel(id), want);
                    }
                    Step::Pop => {
                        let want = (!model.is_empty()).then(|| model.remove(0).1);
                        proptest::prop_assert_eq!(q.pop(), want);
                    }
                }
                proptest::prop_assert_eq!(q.len(), model.len());
            }
            let rest: Vec<u32> = std::iter::from_fn(|| q.pop()).collect();
            let want: Vec<u32> = model.iter().map(|e| e.1).collect();
            proptest::prop_assert_eq!(rest, want);
        }
    }
}
