//! Fuzz target `timer_queue`: runs `tests/model`'s `timerq::check_timer_queue` on each input
//! (the same check `tests/fuzz_corpus.rs` replays on stable Rust).
#![no_main]

#[path = "../../tests/model/mod.rs"]
mod model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    model::timerq::check_timer_queue(data);
});
