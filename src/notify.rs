//! A wake-up signal that cannot be lost.
//!
//! Waiters evaluate their condition while holding the notifier's mutex, and notifiers bump a
//! sequence number under the same mutex before waking, so a state change that happens between
//! "condition is false" and "go to sleep" is always seen. The mutex is held for a few
//! instructions only: the DLPack deleter that calls [`Notifier::notify`] never waits on
//! anything longer than another thread's condition check.

use crate::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) struct Notifier {
    sequence: Mutex<u64>,
    wake: Condvar,
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Self {
            sequence: Mutex::new(0),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        // A poisoned lock only means another thread panicked while holding it; the counter is
        // still meaningful, so recover instead of spreading the panic into a deleter.
        self.sequence
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wake every waiter so that it re-evaluates its condition.
    pub(crate) fn notify(&self) {
        let mut guard = self.lock();
        *guard = guard.wrapping_add(1);
        drop(guard);
        self.wake.notify_all();
    }

    /// Wait until `ready()` returns `Some`, or until `timeout` passes (then `None`).
    pub(crate) fn wait_for<T>(
        &self,
        timeout: Duration,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock();
        loop {
            if let Some(value) = ready() {
                return Some(value);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            guard = self.wait_timeout(guard, deadline - now);
        }
    }

    #[cfg(not(loom))]
    fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, u64>,
        timeout: Duration,
    ) -> MutexGuard<'a, u64> {
        match self.wake.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    // loom has no notion of time: a timed wait is a plain wait, which also proves that no
    // wake-up is lost (a lost one deadlocks the model and fails the check).
    #[cfg(loom)]
    fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, u64>,
        _timeout: Duration,
    ) -> MutexGuard<'a, u64> {
        self.wake.wait(guard).unwrap()
    }
}
