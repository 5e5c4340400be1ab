//! The timer queue: one-shot deadlines in nanoseconds on the loop's clock.
//!
//! Ordered by `(deadline, sequence)`, so equal deadlines fire in the order
//! they were added or last updated, and "as soon as possible" timers
//! (deadline 0) come before every real deadline. A `BTreeMap` gives ordered
//! pop, cancel and update in O(log n) without tombstones.

use std::collections::BTreeMap;

use slotmap::SlotMap;

slotmap::new_key_type! {
    /// Names a timer of one loop. Stale ids (fired or cancelled) are rejected.
    pub struct TimerId;
}

/// The deadline used for "as soon as possible" timers.
pub const ASAP: u64 = 0;

/// Timers ordered by deadline, then by insertion order; generic over the
/// payload so the fuzz target can check it against a sorted list.
pub struct TimerQueue<T> {
    timers: SlotMap<TimerId, (u64, u64, T)>,
    order: BTreeMap<(u64, u64), TimerId>,
    next_seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        TimerQueue {
            timers: SlotMap::with_key(),
            order: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

impl<T> TimerQueue<T> {
    /// Adds a timer due at `deadline`.
    pub fn add(&mut self, deadline: u64, payload: T) -> TimerId {
        let seq = self.bump();
        let id = self.timers.insert((deadline, seq, payload));
        self.order.insert((deadline, seq), id);
        id
    }

    /// Moves a timer to a new deadline, behind timers already due then.
    pub fn update(&mut self, id: TimerId, deadline: u64) -> bool {
        let seq = self.bump();
        let Some(t) = self.timers.get_mut(id) else {
            return false;
        };
        self.order.remove(&(t.0, t.1));
        t.0 = deadline;
        t.1 = seq;
        self.order.insert((deadline, seq), id);
        true
    }

    /// Removes a timer, returning its payload.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let (deadline, seq, payload) = self.timers.remove(id)?;
        self.order.remove(&(deadline, seq));
        Some(payload)
    }

    /// The earliest deadline, if any timer is pending.
    pub fn next_deadline(&self) -> Option<u64> {
        self.order.first_key_value().map(|(&(d, _), _)| d)
    }

    /// Removes and returns the first timer due at or before `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<(TimerId, T)> {
        let entry = self.order.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let id = entry.remove();
        self.timers.remove(id).map(|(_, _, payload)| (id, payload))
    }

    /// Removes and returns the first timer due at or before `now`, if `take`
    /// accepts its payload; otherwise leaves it where it is.
    pub fn pop_due_if(&mut self, now: u64, take: impl FnOnce(&T) -> bool) -> Option<(TimerId, T)> {
        let entry = self.order.first_entry()?;
        if entry.key().0 > now || !take(&self.timers.get(*entry.get())?.2) {
            return None;
        }
        let id = entry.remove();
        self.timers.remove(id).map(|(_, _, payload)| (id, payload))
    }

    /// The payload of a pending timer.
    pub fn payload_mut(&mut self, id: TimerId) -> Option<&mut T> {
        self.timers.get_mut(id).map(|t| &mut t.2)
    }

    /// The deadline of a pending timer.
    pub fn deadline(&self, id: TimerId) -> Option<u64> {
        self.timers.get(id).map(|t| t.0)
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    /// Removes every timer, returning the payloads (to be dropped outside any borrow).
    pub fn drain(&mut self) -> Vec<T> {
        self.order.clear();
        self.timers.drain().map(|(_, (_, _, p))| p).collect()
    }

    fn bump(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_deadlines_fire_in_insertion_order_and_asap_first() {
        let mut q = TimerQueue::default();
        q.add(5, 'a');
        q.add(5, 'b');
        q.add(ASAP, 'c');
        let d = q.add(5, 'd');
        q.update(d, 1);
        let order: Vec<char> = std::iter::from_fn(|| q.pop_due(10).map(|(_, p)| p)).collect();
        assert_eq!(order, ['c', 'd', 'a', 'b']);
    }

    #[test]
    fn pop_due_if_takes_only_what_it_accepts() {
        let mut q = TimerQueue::default();
        let a = q.add(5, 'a');
        q.add(6, 'b');
        assert!(q.pop_due_if(4, |_| true).is_none());
        assert!(q.pop_due_if(10, |&p| p == 'b').is_none());
        assert_eq!(q.payload_mut(a), Some(&mut 'a'));
        assert_eq!(q.pop_due_if(10, |&p| p == 'a'), Some((a, 'a')));
        assert!(q.payload_mut(a).is_none());
        assert_eq!(q.pop_due_if(10, |_| true).map(|(_, p)| p), Some('b'));
        assert!(q.is_empty());
    }

    #[test]
    fn never_pops_before_deadline_and_cancel_removes() {
        let mut q = TimerQueue::default();
        let a = q.add(10, 1);
        assert!(q.pop_due(9).is_none());
        assert_eq!(q.cancel(a), Some(1));
        assert!(q.pop_due(100).is_none());
        assert!(q.cancel(a).is_none());
    }
}
