//! The immediate queue: FIFO, where scheduling again moves an entry to the tail.
//!
//! Each schedule stamps the entry with a fresh sequence number and appends
//! `(id, seq)`; entries whose stamp no longer matches are skipped on pop, so
//! reschedule and cancel are O(1).

use std::collections::VecDeque;

use slotmap::SlotMap;

slotmap::new_key_type! {
    /// Names an immediate of one loop. Stale ids (ran or cancelled) are rejected.
    pub struct ImmediateId;
}

/// Scheduled immediates in FIFO order; generic over the payload.
pub struct ImmediateQueue<T> {
    entries: SlotMap<ImmediateId, (u64, T)>,
    fifo: VecDeque<(ImmediateId, u64)>,
    next_seq: u64,
}

impl<T> Default for ImmediateQueue<T> {
    fn default() -> Self {
        ImmediateQueue {
            entries: SlotMap::with_key(),
            fifo: VecDeque::new(),
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
    pub fn pop(&mut self) -> Option<(ImmediateId, T)> {
        while let Some((id, seq)) = self.fifo.pop_front() {
            if self.entries.get(id).is_some_and(|e| e.0 == seq) {
                return self.entries.remove(id).map(|(_, p)| (id, p));
            }
        }
        None
    }

    /// Number of scheduled immediates.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is scheduled.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes everything, returning the payloads.
    pub fn drain(&mut self) -> Vec<T> {
        self.fifo.clear();
        self.entries.drain().map(|(_, (_, p))| p).collect()
    }

    /// Drops stale stamps once they outnumber live entries, bounding memory
    /// when one immediate is rescheduled over and over.
    fn compact(&mut self) {
        if self.fifo.len() > 2 * self.entries.len() + 16 {
            let entries = &self.entries;
            self.fifo
                .retain(|(id, seq)| entries.get(*id).is_some_and(|e| e.0 == *seq));
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
        let order: Vec<char> = std::iter::from_fn(|| q.pop().map(|(_, p)| p)).collect();
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
}
