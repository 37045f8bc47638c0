//! Synchronisation primitives, swapped for loom's model-checked versions under `--cfg loom`.
//!
//! Everything in [`crate::pool`] and [`crate::notify`] uses these names, so the model check in
//! `tests/loom_pool.rs` exercises the very code the extension runs.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Free list of slots: a mutex-guarded deque, the same code in the extension and under loom,
/// so the model check covers it too. The mutex is held for a push or a pop only.
///
/// A push (what a DLPack deleter does when it returns a slot) never allocates: the producer
/// calls [`FreeList::reserve`] with the slot count whenever a slot is allocated, and the list
/// never holds more buffers than there are slots.
pub(crate) struct FreeList<T>(Mutex<std::collections::VecDeque<T>>);

impl<T> FreeList<T> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(std::collections::VecDeque::new()))
    }

    fn lock(&self) -> MutexGuard<'_, std::collections::VecDeque<T>> {
        // A panic elsewhere cannot leave the deque half-updated; recover instead of spreading
        // the panic into a deleter.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn push(&self, value: T) {
        self.lock().push_back(value)
    }

    pub(crate) fn pop(&self) -> Option<T> {
        self.lock().pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Make room for `total` entries, so that pushes up to that many never allocate.
    pub(crate) fn reserve(&self, total: usize) {
        let mut list = self.lock();
        let more = total.saturating_sub(list.len());
        list.reserve(more);
    }
}
