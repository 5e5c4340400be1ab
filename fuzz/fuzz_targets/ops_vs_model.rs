//! Fuzz target `ops_vs_model`: runs `tests/model`'s `ops::check_ops` on each input
//! (the same check `tests/fuzz_corpus.rs` replays on stable Rust).
#![no_main]

#[path = "../../tests/model/mod.rs"]
mod model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    model::ops::check_ops(data);
});
