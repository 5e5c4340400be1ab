//! The idle check the callback-API example servers share (`#[path]`-included
//! by `echo_callback.rs` and `http_hello.rs`; not an example of its own).
//!
//! A connection's handler sets its `active` flag whenever it makes progress;
//! one timer per connection, every `idle`, clears the flag or, finding it
//! clear, closes the connection. Nothing is done per event but the flag.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use ringloop::{FdId, Handle};

/// Closes connection `id` at the first check, every `idle`, that finds its
/// `active` flag clear (and clears it). A connection closed meanwhile ends
/// the checks: its id is stale, so `remove_fd` finds nothing.
pub fn close_when_idle(lp: &Handle, id: FdId, active: Rc<Cell<bool>>, idle: Duration) {
    let _ = lp.add_timer(idle, move |lp| {
        if active.replace(false) {
            close_when_idle(lp, id, active, idle);
        } else {
            let _ = lp.remove_fd(id);
        }
    });
}

/// The optional IDLE_SECS argument; 60 s without it.
pub fn parse_idle(arg: Option<&str>) -> Result<Duration, String> {
    match arg.map(str::parse::<f64>) {
        None => Ok(Duration::from_secs(60)),
        Some(Ok(secs)) if secs > 0.0 && secs < 1e9 => Ok(Duration::from_secs_f64(secs)),
        Some(_) => Err("IDLE_SECS must be a number of seconds above 0".into()),
    }
}
