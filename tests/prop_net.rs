//! Property test of a stream's reads under cancellation: the checks are
//! `tests/model/net.rs` ([`model::net::run`]): every byte written comes out
//! of the reads once and in order, while reads are started, polled and
//! dropped at random, on both ring set-ups. The case count comes from
//! `PROPTEST_CASES` (default 256).

mod model;

use model::net::run;
use proptest::prelude::*;

proptest! {
    #[test]
    fn reads_lose_and_reorder_nothing_under_cancellation(
        data in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        run(&data, false);
    }

    #[test]
    fn reads_lose_and_reorder_nothing_on_a_plain_ring(
        data in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        run(&data, true);
    }
}

/// A read dropped while in flight with data waiting, and a new read at
/// once: the new one must wait for the dropped one's completion (which
/// took the first bytes), or it returns later bytes first. The minimal
/// case proptest found when reads did not wait.
#[test]
fn read_dropped_in_flight_then_a_new_read() {
    for plain in [false, true] {
        run(&[0, 0, 0, 0, 110, 0, 114, 1, 91, 104, 158], plain);
    }
}

/// A read dropped after its data came, then a read started at once: the
/// second gets the first's bytes, before anything written later.
#[test]
fn hand_written_case() {
    for plain in [false, true] {
        run(
            &[
                1, 7, // start a read of up to 8 bytes
                0, 3, // the peer writes 4 bytes
                5, 0, // a loop turn: the read completes, unpolled
                0, 1, // the peer writes 2 more
                3, 0, // drop the read (its 4 bytes are salvaged)
                1, 0, // a 1-byte read: gets the first salvaged byte
                2, 0, // poll it
                1, 1, // a 2-byte read
                2, 0, // poll it
            ],
            plain,
        );
    }
}
