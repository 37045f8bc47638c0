//! The ready queue: batches in order from the producer thread to the consumer.
//!
//! At most `capacity` items wait. The consumer's take is built so that a Ctrl-C can never lose
//! an item: signals are checked *before* an item leaves the queue (a `KeyboardInterrupt`
//! raised while the consumer waits leaves everything in place), and the item moves straight
//! into a list the caller owns, with no Python code run in between, so it is never held only
//! by a value that an exception could drop on its way back to Python.

use crate::error::{message, CoreError};
use crate::gil;
use crate::notify::Notifier;
use crate::pool::{AcquireError, Pool};
use crate::sync::{Arc, AtomicBool, Ordering};
use crossbeam_queue::ArrayQueue;
use pyo3::prelude::*;
use pyo3::types::PyList;
use std::sync::OnceLock;
use std::time::Duration;

/// "Wait forever", in a form `Instant + Duration` accepts.
pub(crate) const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most items a queue holds: its slots are allocated up front.
pub const MAX_CAPACITY: usize = 1 << 20;

/// A wait limit from Python: `None` (or `inf`, or anything past a year) waits forever.
pub(crate) fn timeout_from(seconds: Option<f64>) -> Result<Duration, CoreError> {
    match seconds {
        None => Ok(FOREVER),
        // Clamped before converting: `Duration::from_secs_f64` panics on huge values.
        Some(s) if s >= 0.0 => Ok(Duration::from_secs_f64(s.min(FOREVER.as_secs_f64()))),
        Some(s) => Err(message!("bad_timeout", timeout = s).into()),
    }
}

/// The state a queue shares with the slot pool it feeds.
pub(crate) struct QueueCore {
    items: ArrayQueue<Py<PyAny>>,
    signal: Notifier,
    consumer_waiting: AtomicBool,
    closed: AtomicBool,
    /// The pool whose producer grows it when the consumer starves: woken whenever starvation
    /// may have begun or ended.
    pool: OnceLock<Pool>,
}

impl QueueCore {
    /// The consumer is blocked and nothing is ready: a producer may grow its pool.
    pub(crate) fn starving(&self) -> bool {
        self.consumer_waiting.load(Ordering::SeqCst) && self.items.is_empty()
    }

    pub(crate) fn feed(&self, pool: Pool) -> Result<(), CoreError> {
        self.pool
            .set(pool)
            .map_err(|_| message!("queue_has_pool").into())
    }

    fn wake_pool(&self) {
        if let Some(pool) = self.pool.get() {
            pool.wake();
        }
    }
}

/// Batches in order between one producer thread and one consumer; every wait releases the GIL.
#[pyclass(module = "fastbridge._core", frozen)]
pub struct ReadyQueue {
    pub(crate) core: Arc<QueueCore>,
}

#[pymethods]
impl ReadyQueue {
    #[new]
    fn new(capacity: usize) -> PyResult<Self> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            let error = message!("queue_capacity", limit = MAX_CAPACITY, capacity = capacity);
            return Err(error.into());
        }
        Ok(Self {
            core: Arc::new(QueueCore {
                items: ArrayQueue::new(capacity),
                signal: Notifier::new(),
                consumer_waiting: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                pool: OnceLock::new(),
            }),
        })
    }

    /// Producer: append an item, waiting for room. Returns `False` when the queue was closed
    /// instead (the item is dropped). Ctrl-C while waiting raises with the item not published.
    fn publish(&self, py: Python<'_>, item: Py<PyAny>) -> PyResult<bool> {
        let core = &self.core;
        let mut item = Some(item);
        let pushed = gil::wait_held_first(py, FOREVER, |slice| {
            core.signal.wait_for(slice, || {
                if core.closed.load(Ordering::SeqCst) {
                    return Some(false);
                }
                let value = item.take().expect("the item is pushed once");
                match core.items.push(value) {
                    Ok(()) => Some(true),
                    Err(back) => {
                        item = Some(back);
                        None
                    }
                }
            })
        });
        if let Ok(Some(true)) = pushed {
            core.signal.notify();
            // A starving producer looks at this queue: let it see the new item.
            core.wake_pool();
        }
        // `item` (if not pushed) is dropped here, with the GIL held.
        drop(item);
        pushed.map(|pushed| pushed.unwrap_or(false))
    }

    /// Consumer: move the next item into `holder` (appended). Waits with the GIL released and
    /// returns `False` after `timeout` seconds. Raises `StreamClosedError` once closed, and
    /// `KeyboardInterrupt` (or what a signal handler raises) while waiting, in which case
    /// nothing was taken.
    #[pyo3(signature = (holder, timeout=None))]
    fn pop_into(
        &self,
        py: Python<'_>,
        holder: &Bound<'_, PyList>,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let core = &self.core;
        let timeout = timeout_from(timeout)?;
        let mut waiting = false;
        // Every step starts right after a signal check: one that arrived while we waited is
        // raised with the item still queued, so a caught KeyboardInterrupt loses nothing.
        let taken = gil::wait_held_first(py, timeout, |slice| {
            if let Some(item) = core.items.pop() {
                core.signal.notify();
                return Some(Ok(item));
            }
            if core.closed.load(Ordering::SeqCst) {
                return Some(Err(CoreError::Acquire(AcquireError::Closed)));
            }
            if slice.is_zero() {
                return None;
            }
            if !waiting {
                waiting = true;
                core.consumer_waiting.store(true, Ordering::SeqCst);
                core.wake_pool();
            }
            core.signal.wait_for(slice, || {
                (!core.items.is_empty() || core.closed.load(Ordering::SeqCst)).then_some(())
            });
            None
        });
        if waiting {
            core.consumer_waiting.store(false, Ordering::SeqCst);
            core.signal.notify();
        }
        match taken? {
            // No Python code runs between the pop and the append.
            Some(Ok(item)) => holder.append(item).map(|()| true),
            Some(Err(closed)) => Err(closed.into()),
            None => Ok(false),
        }
    }

    /// Stop both sides: wakes a blocked producer and consumer and drops the items not yet
    /// taken (their slots return once nothing else holds them).
    fn close(&self) {
        let core = &self.core;
        core.closed.store(true, Ordering::SeqCst);
        core.signal.notify();
        core.wake_pool();
        let mut dropped = Vec::new();
        while let Some(item) = core.items.pop() {
            dropped.push(item);
        }
        drop(dropped);
        core.signal.notify();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.core.closed.load(Ordering::SeqCst)
    }

    /// Items published and not yet taken.
    fn __len__(&self) -> usize {
        self.core.items.len()
    }
}
