//! Fuzz target `net_reads`: runs `tests/model`'s `net::check_net_reads` on
//! each input (the same check `tests/fuzz_corpus.rs` replays on stable Rust):
//! a stream's bytes come out of its reads once and in order while reads are
//! dropped at random.
#![no_main]

#[path = "../../tests/model/mod.rs"]
mod model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    model::net::check_net_reads(data);
});
