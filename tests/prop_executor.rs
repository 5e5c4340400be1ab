//! Property test: random spawn / wake (same thread and from other threads) /
//! abort / drop-handle / yield sequences on `rt::Runtime`, checked against
//! the model in tests/model/executor.rs. The case count comes from
//! `PROPTEST_CASES` (default 256).

mod model;

use std::sync::Mutex;

use proptest::prelude::*;

/// The check counts the process's open fds: run one case at a time.
static SERIAL: Mutex<()> = Mutex::new(());

proptest! {
    /// Tasks complete exactly once or are cancelled; no wake-up is lost.
    #[test]
    fn executor_matches_the_model(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        model::executor::check_executor(&data);
    }
}

/// One of each operation: tasks that wait for a gate opened from another
/// thread, an abort, a dropped handle, a polled handle and yields.
#[test]
fn hand_written_case() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ops: &[u8] = &[
        0,
        1, // spawn task 0: one gate
        0,
        3 | 0b1000, // spawn task 1: gate, yield, gate
        0,
        2, // spawn task 2: gate, gate
        5,
        0, // drive
        2,
        0, // open gate 0 from another thread
        6,
        2, // poll handle 2 (pending)
        3,
        2, // abort task 2
        4,
        1, // drop handle 1
        1,
        1, // open gate 1
        7,
        0, // join threads, drive
        6,
        0, // poll handle 0
    ];
    model::executor::check_executor(ops);
}
