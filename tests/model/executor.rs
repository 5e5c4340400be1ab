//! Random task lifecycles on `ringloop::rt::Runtime`, checked against a
//! simple model (fuzz target `executor`, `tests/prop_executor.rs` and the
//! corpus replay all call [`check_executor`]).
//!
//! Each task runs a short plan of steps: wait for its gate (a flag that the
//! harness sets and then wakes the stored waker, on this thread or from
//! another thread), or yield once. The harness spawns tasks, opens gates,
//! aborts tasks, drops or polls their join handles and drives the runtime.
//! The model (SEMANTICS.md §8):
//! - every spawned task either completes exactly once (its handle gives
//!   `Ok(value)`) or was aborted before it completed (its handle gives an
//!   error with `is_cancelled()`, and it is never polled again);
//! - no task is polled after it completed;
//! - a wake-up is never lost: once every gate is open and every waking
//!   thread has finished, every task that was not aborted completes;
//! - every task's future is dropped exactly once, and the runtime leaves no
//!   fd behind when it is dropped.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ringloop::rt::{JoinError, JoinHandle, Runtime};
use ringloop::{Builder, WaitTimeout};

use super::{Src, open_fds};

const MAX_TASKS: usize = 16;

/// A flag plus the waker of the task waiting for it.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    /// Sets the flag, then wakes the waiter (the order a real event source uses).
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        let w = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// What the harness learns about one task's future.
#[derive(Default)]
struct Log {
    polls: Cell<u32>,
    completions: Cell<u32>,
    drops: Cell<u32>,
    /// Set by the harness when it aborted the task before it completed.
    aborted: Cell<bool>,
    /// Contract violations seen inside `poll` (a panic there would only
    /// become the task's `JoinError`).
    violations: RefCell<Vec<String>>,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Gate,
    Yield,
}

struct TaskFut {
    id: usize,
    steps: Vec<Step>,
    yielded: bool,
    gate: Arc<Gate>,
    log: Rc<Log>,
}

impl Future for TaskFut {
    type Output = usize;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let log = self.log.clone();
        log.polls.set(log.polls.get() + 1);
        if log.completions.get() > 0 {
            log.violations
                .borrow_mut()
                .push(format!("task {} polled after it completed", self.id));
        }
        if log.aborted.get() {
            log.violations
                .borrow_mut()
                .push(format!("task {} polled after it was aborted", self.id));
        }
        while let Some(&step) = self.steps.first() {
            match step {
                Step::Yield => {
                    if !self.yielded {
                        self.yielded = true;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    self.yielded = false;
                }
                Step::Gate => {
                    if !self.gate.open.swap(false, Ordering::SeqCst) {
                        *self.gate.waker.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(cx.waker().clone());
                        // Opened between the check and storing the waker?
                        if !self.gate.open.swap(false, Ordering::SeqCst) {
                            return Poll::Pending;
                        }
                    }
                }
            }
            self.steps.remove(0);
        }
        log.completions.set(log.completions.get() + 1);
        Poll::Ready(self.id * 7 + 1)
    }
}

impl Drop for TaskFut {
    fn drop(&mut self) {
        self.log.drops.set(self.log.drops.get() + 1);
    }
}

struct Task {
    gate: Arc<Gate>,
    log: Rc<Log>,
    handle: Option<JoinHandle<usize>>,
    /// The handle's result, once taken.
    result: Option<Result<usize, JoinError>>,
}

struct Harness {
    tasks: Vec<Task>,
    threads: Vec<std::thread::JoinHandle<()>>,
    log: Vec<String>,
}

impl Harness {
    fn fail(&self, msg: String) -> ! {
        panic!("{msg}\nops:\n  {}", self.log.join("\n  "));
    }

    fn join_threads(&mut self) {
        for t in self.threads.drain(..) {
            t.join().expect("waking thread");
        }
    }

    /// Checks a join handle's result against the model.
    fn check_result(&self, i: usize, r: &Result<usize, JoinError>) {
        let t = &self.tasks[i];
        match r {
            Ok(v) if *v == i * 7 + 1 && t.log.completions.get() == 1 && !t.log.aborted.get() => {}
            Err(e) if e.is_cancelled() && t.log.aborted.get() => {}
            r => self.fail(format!(
                "task {i}: handle gave {r:?}, completions {}, aborted {}",
                t.log.completions.get(),
                t.log.aborted.get()
            )),
        }
    }
}

/// Runs the runtime until its main future has yielded `n` times.
fn drive(rt: &Runtime, n: u8) {
    rt.block_on(async move {
        for _ in 0..n {
            ringloop::rt::yield_now().await;
        }
    });
}

/// Decodes `data` into task operations, runs them and checks the model;
/// panics with the operation log on the first difference.
pub fn check_executor(data: &[u8]) {
    let fds_before = open_fds();
    {
        let lp = Builder::default()
            .wait_timeout(WaitTimeout::After(Duration::from_millis(20)))
            .build()
            .expect("build loop");
        let rt = Runtime::with_loop(lp).expect("runtime");
        run_ops(&rt, data);
        drop(rt);
    }
    let fds_after = open_fds();
    assert_eq!(
        fds_before, fds_after,
        "open fds before and after the runtime"
    );
}

fn run_ops(rt: &Runtime, data: &[u8]) {
    let mut h = Harness {
        tasks: Vec::new(),
        threads: Vec::new(),
        log: Vec::new(),
    };
    let mut src = Src::new(&data[..data.len().min(1024)]);
    while !src.is_empty() {
        let (op, a) = (src.u8(), src.u8());
        let n = h.tasks.len();
        let pick = |k: u8| (n > 0).then(|| k as usize % n);
        match op % 8 {
            0 if n < MAX_TASKS => {
                let steps: Vec<Step> = (0..a % 4)
                    .map(|k| {
                        if a >> (2 + k) & 1 == 0 {
                            Step::Gate
                        } else {
                            Step::Yield
                        }
                    })
                    .collect();
                h.log.push(format!("spawn task {n}: {steps:?}"));
                let gate = Arc::new(Gate::default());
                let log = Rc::new(Log::default());
                let handle = rt.spawn(TaskFut {
                    id: n,
                    steps,
                    yielded: false,
                    gate: gate.clone(),
                    log: log.clone(),
                });
                h.tasks.push(Task {
                    gate,
                    log,
                    handle: Some(handle),
                    result: None,
                });
            }
            1 => {
                if let Some(i) = pick(a) {
                    h.log.push(format!("open gate {i}"));
                    h.tasks[i].gate.open();
                }
            }
            2 => {
                if let Some(i) = pick(a) {
                    h.log.push(format!("open gate {i} from another thread"));
                    if h.threads.len() >= 8 {
                        h.join_threads();
                    }
                    let gate = h.tasks[i].gate.clone();
                    h.threads.push(std::thread::spawn(move || gate.open()));
                }
            }
            3 => {
                if let Some(i) = pick(a) {
                    let t = &h.tasks[i];
                    if let Some(jh) = &t.handle {
                        h.log.push(format!("abort task {i}"));
                        if t.log.completions.get() == 0 {
                            t.log.aborted.set(true);
                        }
                        jh.abort();
                        if t.log.aborted.get() && t.log.drops.get() != 1 {
                            // An aborted task that is not running is dropped at once.
                            h.fail(format!("task {i}: aborted but its future was not dropped"));
                        }
                    }
                }
            }
            4 => {
                if let Some(i) = pick(a) {
                    h.log.push(format!("drop handle {i}"));
                    h.tasks[i].handle = None;
                }
            }
            5 => {
                h.log.push(format!("drive {}", a % 4 + 1));
                drive(rt, a % 4 + 1);
            }
            6 => {
                if let Some(i) = pick(a)
                    && let Some(mut jh) = h.tasks[i].handle.take()
                {
                    h.log.push(format!("poll handle {i}"));
                    // Poll the handle once with block_on's waker; a later
                    // completion wakes a main task that has already returned.
                    let r = rt.block_on(std::future::poll_fn(|cx| {
                        Poll::Ready(match Pin::new(&mut jh).poll(cx) {
                            Poll::Ready(r) => Some(r),
                            Poll::Pending => None,
                        })
                    }));
                    match r {
                        Some(r) => {
                            h.check_result(i, &r);
                            h.tasks[i].result = Some(r);
                        }
                        None => {
                            let t = &h.tasks[i];
                            if t.log.aborted.get() || t.log.completions.get() > 0 {
                                h.fail(format!("task {i}: finished but its handle is pending"));
                            }
                            h.tasks[i].handle = Some(jh);
                        }
                    }
                }
            }
            _ => {
                h.log.push("join waking threads, drive".into());
                h.join_threads();
                drive(rt, 1);
            }
        }
        for (i, t) in h.tasks.iter().enumerate() {
            if let Some(v) = t.log.violations.borrow().first() {
                h.fail(format!("task {i}: {v}"));
            }
            if t.log.completions.get() > 1 {
                h.fail(format!(
                    "task {i} completed {} times",
                    t.log.completions.get()
                ));
            }
        }
    }

    // Open every gate until every task that was not aborted has completed:
    // a lost wake-up leaves one pending forever.
    h.log.push("finish".into());
    h.join_threads();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending: Vec<usize> = (0..h.tasks.len())
            .filter(|&i| !h.tasks[i].log.aborted.get() && h.tasks[i].log.completions.get() == 0)
            .collect();
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            h.fail(format!(
                "tasks {pending:?} never completed: a wake-up was lost"
            ));
        }
        for &i in &pending {
            // Only a task waiting for its gate has stored a waker; opening it
            // for a task that is not there yet is kept for its next check.
            h.tasks[i].gate.open();
        }
        drive(rt, 2);
    }
    for i in 0..h.tasks.len() {
        if let Some(jh) = h.tasks[i].handle.take() {
            let r = rt.block_on(jh);
            h.check_result(i, &r);
        } else if let Some(r) = &h.tasks[i].result {
            h.check_result(i, r);
        }
        let t = &h.tasks[i];
        if let Some(v) = t.log.violations.borrow().first() {
            h.fail(format!("task {i}: {v}"));
        }
        let want = u32::from(!t.log.aborted.get());
        if t.log.completions.get() != want {
            h.fail(format!(
                "task {i}: {} completions, aborted {}",
                t.log.completions.get(),
                t.log.aborted.get()
            ));
        }
        if t.log.drops.get() != 1 {
            h.fail(format!(
                "task {i}: future dropped {} times",
                t.log.drops.get()
            ));
        }
    }
    if rt.task_count() != 0 {
        h.fail(format!("{} tasks left in the runtime", rt.task_count()));
    }
}
