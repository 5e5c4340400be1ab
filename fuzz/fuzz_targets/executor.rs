//! Fuzz target `executor`: runs `tests/model`'s `executor::check_executor` on
//! each input (the same check `tests/fuzz_corpus.rs` replays on stable Rust).
#![no_main]

#[path = "../../tests/model/mod.rs"]
mod model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    model::executor::check_executor(data);
});
