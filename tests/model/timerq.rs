//! The `timer_queue` check: `ringloop::reactor::TimerQueue` against a plain
//! list kept sorted by `(deadline, order added or updated)`.

use ringloop::reactor::{TimerId, TimerQueue};

use super::Src;

fn deadline(src: &mut Src) -> u64 {
    match src.u8() % 8 {
        0 => 0,
        1 => u64::MAX,
        2 => u64::from(src.u32()) << 32 | u64::from(src.u32()),
        _ => u64::from(src.u8() % 16),
    }
}

/// Runs the operations decoded from `data` on both; panics on a difference.
pub fn check_timer_queue(data: &[u8]) {
    let mut q: TimerQueue<u32> = TimerQueue::default();
    // The model: (deadline, seq, payload), with ids by payload.
    let mut model: Vec<(u64, u64, u32)> = Vec::new();
    let mut ids: Vec<TimerId> = Vec::new();
    let mut seq = 0u64;
    let mut src = Src::new(data);
    while !src.is_empty() {
        let op = src.u8();
        match op % 6 {
            0 | 1 => {
                let d = deadline(&mut src);
                let payload = ids.len() as u32;
                ids.push(q.add(d, payload));
                seq += 1;
                model.push((d, seq, payload));
            }
            2 if !ids.is_empty() => {
                let k = src.u8() as usize % ids.len();
                let got = q.cancel(ids[k]);
                let pos = model.iter().position(|t| t.2 == k as u32);
                assert_eq!(got, pos.map(|p| model.remove(p).2), "cancel {k}");
            }
            3 if !ids.is_empty() => {
                let k = src.u8() as usize % ids.len();
                let d = deadline(&mut src);
                seq += 1;
                let found = match model.iter_mut().find(|t| t.2 == k as u32) {
                    Some(t) => {
                        t.0 = d;
                        t.1 = seq;
                        true
                    }
                    None => false,
                };
                assert_eq!(q.update(ids[k], d), found, "update {k}");
            }
            4 => {
                let now = deadline(&mut src);
                model.sort();
                let want = match model.first() {
                    Some(t) if t.0 <= now => Some(model.remove(0).2),
                    _ => None,
                };
                let got = q.pop_due(now);
                assert_eq!(got.map(|(_, p)| p), want, "pop_due({now})");
                if let Some((id, p)) = got {
                    assert_eq!(id, ids[p as usize]);
                }
            }
            _ => {
                let k = src.u8() as usize;
                if !ids.is_empty() {
                    let k = k % ids.len();
                    let want = model.iter().find(|t| t.2 == k as u32).map(|t| t.0);
                    assert_eq!(q.deadline(ids[k]), want, "deadline {k}");
                }
            }
        }
        model.sort();
        assert_eq!(q.len(), model.len());
        assert_eq!(q.is_empty(), model.is_empty());
        assert_eq!(q.next_deadline(), model.first().map(|t| t.0));
    }
    let mut rest = q.drain();
    rest.sort();
    let mut want: Vec<u32> = model.iter().map(|t| t.2).collect();
    want.sort();
    assert_eq!(rest, want, "drain");
    assert!(q.is_empty() && q.next_deadline().is_none());
}
