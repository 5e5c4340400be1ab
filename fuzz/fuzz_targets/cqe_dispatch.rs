//! Fuzz target `cqe_dispatch`: runs `tests/model`'s `cqe::check_cqe` on each input
//! (the same check `tests/fuzz_corpus.rs` replays on stable Rust).
#![no_main]

#[path = "../../tests/model/mod.rs"]
mod model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    model::cqe::check_cqe(data);
});
