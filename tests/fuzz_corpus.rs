//! Replays every stored fuzz input (`fuzz/corpus/<target>/`) through the same
//! check functions the fuzz targets run, as ordinary tests on stable Rust.
//! Inputs that once found a bug stay in the corpus as regression inputs.
//! `RINGLOOP_FUZZ_ONLY=NAME` replays only the inputs whose file name
//! contains NAME (to debug one of them).

mod model;

use std::path::Path;
use std::sync::Mutex;

/// The checks count the process's open fds: run one input at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn replay(target: &str, check: fn(&[u8])) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    if !dir.exists() && std::env::var_os("RINGLOOP_IN_VM").is_some() {
        eprintln!("{}: not copied into the VM; skipped", dir.display());
        return;
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            std::env::var("RINGLOOP_FUZZ_ONLY").map_or(true, |only| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(&only))
            })
        })
        .collect();
    files.sort();
    if files.is_empty() && std::env::var_os("RINGLOOP_FUZZ_ONLY").is_some() {
        eprintln!("{target}: no input matches RINGLOOP_FUZZ_ONLY; skipped");
        return;
    }
    assert!(!files.is_empty(), "no corpus inputs in {}", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let r = std::panic::catch_unwind(|| check(&data));
        if r.is_err() {
            panic!("{target}: input {} fails", f.display());
        }
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn ops_vs_model_corpus() {
    replay("ops_vs_model", model::ops::check_ops);
}

#[test]
fn cqe_dispatch_corpus() {
    replay("cqe_dispatch", model::cqe::check_cqe);
}

#[test]
fn timer_queue_corpus() {
    replay("timer_queue", model::timerq::check_timer_queue);
}

#[test]
fn executor_corpus() {
    replay("executor", model::executor::check_executor);
}

#[test]
fn net_reads_corpus() {
    replay("net_reads", model::net::check_net_reads);
}
