//! Every place the core lets go of the GIL, and how Ctrl-C still gets through.
//!
//! Python runs signal handlers only on the main thread and only while it holds the GIL, so a
//! wait that released it for its whole length would make Ctrl-C wait too. Waits therefore
//! release it in slices and check for signals, with the GIL held, before each slice.

use pyo3::prelude::*;
use std::time::{Duration, Instant};

/// How long a wait runs with the GIL released before it checks for Ctrl-C.
pub(crate) const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Wait up to `timeout` for `step` to return `Some`, with the GIL released while it runs.
///
/// `step(slice)` may block for at most `slice` (at most [`SIGNAL_POLL`]); pending signals are
/// checked right before every call, so an exception a handler raises (`KeyboardInterrupt`)
/// leaves everything the next call would have taken in place. Once the time is up, `step`
/// runs one last time with a zero slice; `Ok(None)` if that finds nothing either.
pub(crate) fn wait<T: Send>(
    py: Python<'_>,
    timeout: Duration,
    mut step: impl FnMut(Duration) -> Option<T> + Send,
) -> PyResult<Option<T>> {
    let deadline = Instant::now() + timeout;
    loop {
        py.check_signals()?;
        let left = deadline.saturating_duration_since(Instant::now());
        #[allow(clippy::disallowed_methods)] // this module is where the GIL is released
        let found = py.detach(|| step(left.min(SIGNAL_POLL)));
        if let Some(value) = found {
            return Ok(Some(value));
        }
        if left.is_zero() {
            return Ok(None);
        }
    }
}

/// [`wait`], but first one `step` with a zero slice while still holding the GIL (right after a
/// signal check): what is already there is taken without letting go of the GIL. Letting go
/// hands it to any thread that wants it, and getting it back can then take that thread's whole
/// switch interval (5 ms by default), a stall in every `next()` while the producer runs Python.
/// Only for steps that never block or allocate with a zero slice (the ready queue's).
pub(crate) fn wait_held_first<T: Send>(
    py: Python<'_>,
    timeout: Duration,
    mut step: impl FnMut(Duration) -> Option<T> + Send,
) -> PyResult<Option<T>> {
    py.check_signals()?;
    if let Some(value) = step(Duration::ZERO) {
        return Ok(Some(value));
    }
    wait(py, timeout, step)
}

/// Run bounded work (a copy that waits on nothing) with the GIL released, in one go: it cannot
/// hang, and a signal that arrives meanwhile is raised by the interpreter as soon as it returns.
#[allow(clippy::disallowed_methods)] // this module is where the GIL is released
pub(crate) fn run<T: Send>(py: Python<'_>, work: impl FnOnce() -> T + Send) -> T {
    py.detach(work)
}
