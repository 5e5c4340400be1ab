//! Runs the examples that are not servers (`demo`, `timers`, `file_copy`)
//! and checks what they print and do.
//!
//! Like `examples_servers.rs`, this needs the example binaries built
//! (plain `cargo test` or `cargo build --examples`); a missing binary is
//! reported and the test passes without checking anything.

mod example_bin;
use example_bin::example_path;
use std::process::{Command, Output};

fn run(name: &str, args: &[&str]) -> Option<Output> {
    let path = example_path(name)?;
    Some(
        Command::new(&path)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display())),
    )
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `needles` occur in `hay` in this order.
fn assert_in_order(hay: &str, needles: &[&str]) {
    let mut at = 0;
    for n in needles {
        match hay[at..].find(n) {
            Some(i) => at += i + n.len(),
            None => panic!("{n:?} missing (or out of order) in:\n{hay}"),
        }
    }
}

#[test]
fn demo_shows_every_kind_of_event() {
    let Some(out) = run("demo", &[]) else {
        return;
    };
    let text = stdout_of(&out);
    assert_in_order(
        &text,
        &[
            "read \"ping\"",
            "read \" pon\"",
            "read \"g\"",
            "peer hangs up",
            "read gave EOF",
            "the peer already reads EOF",
            "10 ms timer fired",
            "20 ms timer fired",
            "30 ms timer fired",
            "immediate 1",
            "immediate 2",
            "immediate 3",
            "immediate scheduled by immediate 3",
            "as-soon-as-possible timer",
            "worker thread: scheduling",
            "on the loop's thread",
            "SIGUSR1 handled",
            "IORING_OP_READ of /proc/self/stat",
            "main task: got back",
            "iterations=",
        ],
    );
    assert!(!text.contains("unexpected"), "{text}");
}

#[test]
fn timers_example() {
    let Some(out) = run("timers", &[]) else {
        return;
    };
    let text = stdout_of(&out);
    assert_in_order(
        &text,
        &[
            "tick  1",
            "tick 10",
            "the debounced action ran once",
            "cancelling the 200 ms timeout",
            "a deadline one second ago",
            "first",
            "second",
            "third",
            "too far in the future",
            "before advancing: fired = false",
            "after clock.advance(1 h): fired = true",
        ],
    );
    assert!(!text.contains("not expected"), "{text}");
}

#[test]
fn file_copy_copies_exactly() {
    let dir = std::env::temp_dir().join(format!("ringloop-file-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src");
    let dst = dir.join("dst");
    // Not a multiple of the chunk size, with a pattern that shows misplaced chunks.
    let data: Vec<u8> = (0..3_000_017u32)
        .map(|i| (i % 251) as u8 ^ (i >> 18) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    std::fs::write(
        &dst,
        b"old contents that must be replaced, and longer than nothing",
    )
    .unwrap();
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());

    if let Some(out) = run("file_copy", &[s, d]) {
        let text = stdout_of(&out);
        assert!(text.contains("copied 3000017 bytes"), "{text}");
        assert!(std::fs::read(&dst).unwrap() == data, "the copy differs");

        // An empty file.
        std::fs::write(&src, b"").unwrap();
        stdout_of(&run("file_copy", &[s, d]).unwrap());
        assert_eq!(std::fs::read(&dst).unwrap().len(), 0);

        // A file whose size reads as 0 but has content is read to its end.
        let out = run("file_copy", &["/proc/self/status", d]).unwrap();
        stdout_of(&out);
        let copied = std::fs::read_to_string(&dst).unwrap();
        assert!(copied.starts_with("Name:"), "{copied:?}");

        // A hard link to SRC is SRC: copying onto it must not empty it.
        std::fs::write(&src, &data).unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&src, &link).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let fifo_c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
        let (l, f) = (link.to_str().unwrap(), fifo.to_str().unwrap());

        // Bad input gives an error message and a failing status, not a panic
        // (and a FIFO as SRC does not hang the open).
        for args in [
            &[s][..],
            &[s, s],
            &[s, l],
            &[f, d],
            &["/nonexistent/ringloop", d],
            &["/", d],
        ] {
            let out = run("file_copy", args).unwrap();
            assert!(!out.status.success(), "{args:?} succeeded");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.starts_with("file_copy: "), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
        }
        assert!(std::fs::read(&src).unwrap() == data, "SRC was changed");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every pipe_bench variant finishes its rounds (a lost wake-up would hang
/// it: a round ends only when every byte written has been read) and prints
/// the one result line the issue prescribes.
#[test]
fn pipe_bench_every_variant_completes() {
    use std::time::{Duration, Instant};
    let Some(path) = example_path("pipe_bench") else {
        return;
    };
    let variants = [
        "ringloop",
        "ringloop-edge",
        "ringloop-ops",
        "ringloop-async",
        "ringloop-async-ops",
        "ringloop-async-multi",
        "epoll",
        "epoll-edge",
        "tokio",
    ];
    for v in variants {
        // 5 chains over 20 pairs: pairs often hold two bytes at once.
        let mut child = Command::new(&path)
            .args([v, "-n", "20", "-a", "5", "-w", "300", "-r", "5"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn pipe_bench");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("pipe_bench {v} did not finish in 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = stdout_of(&child.wait_with_output().expect("output"));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{v}: {out}");
        let prefix = format!("{v} pipes=20 active=5 writes=300 rounds=5 median_us=");
        assert!(lines[0].starts_with(&prefix), "{v}: {out}");
        let rate: f64 = lines[0]
            .rsplit_once("events_per_s=")
            .and_then(|(_, r)| r.parse().ok())
            .unwrap_or_else(|| panic!("{v}: no events_per_s in {out}"));
        assert!(rate > 0.0, "{v}: {out}");
    }
}

/// The kernel facts README's "a level re-check without a poll arm" rests
/// on, as `probe_recheck` finds them on the running kernel: the in-ring
/// SIOCINQ does not answer for Unix sockets, and a peek consumes the
/// pending `ECONNRESET` that the application's read should have seen.
#[test]
fn probe_recheck_finds_no_cheaper_level_recheck() {
    let Some(out) = run("probe_recheck", &[]) else {
        return;
    };
    let text = stdout_of(&out);
    let line = |key: &str| -> &str {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key:?} missing in:\n{text}"))
    };
    assert!(line("siocinq unix-stream: ").starts_with("error"), "{text}");
    assert!(line("siocinq unix-dgram: ").starts_with("error"), "{text}");
    assert!(
        line("peek after reset, first: ").contains("reset"),
        "{text}"
    );
    assert_eq!(line("read after the peeks: "), "0 bytes", "{text}");
}
