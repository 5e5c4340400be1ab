//! Property tests: random operation sequences run against the real loop and
//! the reference model of SEMANTICS.md (tests/model/), checked after every
//! step. The case count comes from `PROPTEST_CASES` (default 256).

mod model;

use std::sync::Mutex;

use proptest::prelude::*;

/// The checks count the process's open fds: run one case at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn config() -> ProptestConfig {
    ProptestConfig {
        // Shrinking a failing case can take long; it stops on its own.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Fd watches, timers and immediates against the model.
    #[test]
    fn ops_match_the_model(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        model::ops::check_ops(&data);
    }

    /// Made-up completions never reach a removed watch or break the loop.
    #[test]
    fn injected_completions_are_harmless(data in prop::collection::vec(any::<u8>(), 0..400)) {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        model::cqe::check_cqe(&data);
    }

    /// The timer queue against a sorted list.
    #[test]
    fn timer_queue_matches_a_sorted_list(data in prop::collection::vec(any::<u8>(), 0..400)) {
        model::timerq::check_timer_queue(&data);
    }
}

/// A case that exercises one of each: several watches on one socket, a peer
/// that writes and closes, removal from inside a handler, an immediate and a
/// timer. (`RINGLOOP_MODEL_LOG=1` prints what a case did.)
#[test]
fn hand_written_case() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The first byte picks the kinds of two pairs (0: both unix). Then each
    // operation is a selector (an index into the harness's weight table),
    // two bytes, and for adds three more bytes: the handler's action.
    let ops: &[u8] = &[
        0, // two unix pairs
        1, 0, 1, 0, 0, 0, // owned READ watch on pair 0, Nop
        4, 0, 5, 3, 0, 0, // raw READ|ERROR watch, removes watch 0 when it runs
        1, 0, 2, 0, 0, 0, // owned WRITE watch
        30, 1, 0, // run_once
        11, 0, 3, // peer writes
        30, 0, 0, // run 6
        16, 0, 0, // peer closes
        30, 0, 0, 30, 0, 0, // run 6 twice
        23, 0, 0, 0, 0, 0, // immediate
        19, 0, 3, 0, 0, 0, // timer in 3 ms
        26, 0, 5, // clock +5 ms
        30, 0, 0, // run 6
    ];
    model::ops::check_ops(ops);
}

/// Immediates scheduled through a `Remote` from the loop's own thread,
/// among local ones and from inside handlers: each joins the FIFO when the
/// loop's next wait takes it, behind what was scheduled before.
#[test]
fn remote_immediates_join_the_fifo_at_the_next_wait() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Op selectors are indices into the harness's weight table: 23 adds an
    // immediate (remote when its second byte is >= 224), 30 runs iterations
    // (six when its first byte is a multiple of 4). An action is three bytes:
    // 5 adds an immediate, remote when the next byte is >= 224.
    let ops: &[u8] = &[
        0, // two unix pairs, unused
        23, 0, 0, 0, 0, 0, // local immediate 0
        23, 0, 230, 0, 0, 0, // remote immediate 1
        23, 0, 0, 0, 0, 0, // local immediate 2
        23, 0, 230, 5, 0, 0, // remote immediate 3, which adds a local one
        23, 0, 230, 5, 230, 0, // remote immediate 4, which adds a remote one
        30, 0, 0, // six iterations
        23, 0, 230, 0, 0, 0, // one more remote
        23, 0, 0, 0, 0, 0, // and a local one after it
        30, 0, 0, 30, 0, 0, // twelve iterations
    ];
    model::ops::check_ops(ops);
}
