//! The slot pool: a free list of page-aligned buffers and the leases that hold them.
//!
//! Slot states are expressed by who owns the [`HostBuffer`], so no state can be skipped:
//!
//! * FREE: in the free list.
//! * FILLING: returned by [`Pool::acquire`] inside a fresh `Arc<Lease>`; the producer writes it
//!   through `Arc::get_mut`, which only succeeds while nothing else references the lease.
//! * READY / LEASED: the lease is shared (`Arc` clones held by DLPack exports and batch
//!   objects); nobody can write any more.
//! * FREE again when the last clone drops: [`Lease`]'s `Drop` pushes the buffer back (or frees
//!   it once the pool is closed) and wakes a waiting producer. That drop is what a DLPack
//!   deleter runs: pure Rust, any thread, no GIL, no panic, and no allocation (the free list
//!   has room for every slot, reserved when a slot is allocated).
//!
//! The pool grows when the consumer is starved and every slot is leased (a consumer that keeps
//! batches must never deadlock), up to an optional byte cap.

use crate::memory::{HostBuffer, Pinning};
use crate::notify::Notifier;
use crate::sync::{Arc, AtomicBool, AtomicUsize, FreeList, Ordering};
use std::time::Duration;

/// How a pool is set up.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Slots allocated on demand before the pool counts as grown.
    pub slots: usize,
    /// Refuse to hold more than this many bytes of slots; `None` for no cap.
    pub max_bytes: Option<usize>,
    /// Try to `mlock` every slot.
    pub lock: bool,
    /// Try to register every slot with the CUDA driver.
    pub cuda: bool,
}

/// Why [`Pool::acquire`] returned no slot.
#[derive(Debug, PartialEq, Eq)]
pub enum AcquireError {
    /// The pool was closed while waiting.
    Closed,
    /// No slot came back within the timeout.
    TimedOut,
    /// A new or larger slot would exceed `max_bytes`.
    Exhausted {
        requested: usize,
        held: usize,
        max_bytes: usize,
    },
    /// The allocator refused.
    AllocationFailed { bytes: usize },
}

/// Counters, read without locking (each is exact on its own, not a consistent snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub slots: usize,
    pub free: usize,
    pub leased: usize,
    pub bytes: usize,
    pub grown: usize,
    pub locked_slots: usize,
    pub locked_bytes: usize,
    pub cuda_slots: usize,
}

struct Shared {
    config: PoolConfig,
    free: FreeList<HostBuffer>,
    /// Signalled when a slot comes back, when the consumer starts starving, and on close.
    signal: Notifier,
    closed: AtomicBool,
    slots: AtomicUsize,
    bytes: AtomicUsize,
    leased: AtomicUsize,
    grown: AtomicUsize,
    locked_slots: AtomicUsize,
    locked_bytes: AtomicUsize,
    cuda_slots: AtomicUsize,
    /// The process that made the pool. After `fork()` a child inherits leases but not the
    /// threads that may hold the notifier's lock or the allocator's: it must not touch either.
    owner: u32,
}

impl Shared {
    fn account_new(&self, buffer: &HostBuffer) {
        let Pinning { locked, cuda } = buffer.pinning();
        // Locked bytes first, total bytes last (the reverse on release), so that a reader
        // never sees more total than locked bytes for memory that is in fact locked.
        if locked {
            self.locked_bytes
                .fetch_add(buffer.capacity(), Ordering::SeqCst);
        }
        self.bytes.fetch_add(buffer.capacity(), Ordering::SeqCst);
        self.locked_slots
            .fetch_add(usize::from(locked), Ordering::SeqCst);
        self.cuda_slots
            .fetch_add(usize::from(cuda), Ordering::SeqCst);
    }

    /// Free a buffer's memory and its accounting (not its slot count).
    fn release_memory(&self, buffer: HostBuffer) {
        self.bytes.fetch_sub(buffer.capacity(), Ordering::SeqCst);
        let Pinning { locked, cuda } = buffer.pinning();
        if locked {
            self.locked_bytes
                .fetch_sub(buffer.capacity(), Ordering::SeqCst);
        }
        self.locked_slots
            .fetch_sub(usize::from(locked), Ordering::SeqCst);
        self.cuda_slots
            .fetch_sub(usize::from(cuda), Ordering::SeqCst);
        drop(buffer);
    }

    fn discard(&self, buffer: HostBuffer) {
        self.release_memory(buffer);
        self.slots.fetch_sub(1, Ordering::SeqCst);
    }

    fn drain_free(&self) {
        while let Some(buffer) = self.free.pop() {
            self.discard(buffer);
        }
    }
}

/// A handle to the pool; cheap to clone, shared by producer and consumer.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

/// Shared ownership of one filled slot. Every DLPack export and every batch object holds an
/// `Arc<Lease>`; the slot is free again when the last one is dropped.
pub struct Lease {
    buffer: Option<HostBuffer>,
    shared: Arc<Shared>,
}

impl Lease {
    pub fn buffer(&self) -> &HostBuffer {
        self.buffer
            .as_ref()
            .expect("a live lease always holds its buffer")
    }

    /// Writable view of the slot: only reachable through `Arc::get_mut`, i.e. while the
    /// producer is the only owner (FILLING).
    pub fn buffer_mut(&mut self) -> &mut HostBuffer {
        self.buffer
            .as_mut()
            .expect("a live lease always holds its buffer")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(buffer) = self.buffer.take() else {
            return;
        };
        let shared = &self.shared;
        if std::process::id() != shared.owner {
            // A forked child dropping an inherited lease: leak its copy of the slot rather than
            // take locks that a thread of the parent may have held at the fork.
            std::mem::forget(buffer);
            return;
        }
        if shared.closed.load(Ordering::SeqCst) {
            shared.discard(buffer);
        } else {
            shared.free.push(buffer);
            // close() may have drained the free list between our check and the push: drain
            // again so that memory never outlives a closed pool.
            if shared.closed.load(Ordering::SeqCst) {
                shared.drain_free();
            }
        }
        shared.leased.fetch_sub(1, Ordering::SeqCst);
        shared.signal.notify();
    }
}

enum Step {
    Reuse(HostBuffer),
    Allocate { grown: bool },
    Stop(AcquireError),
}

impl Pool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                free: FreeList::new(),
                signal: Notifier::new(),
                closed: AtomicBool::new(false),
                slots: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                leased: AtomicUsize::new(0),
                grown: AtomicUsize::new(0),
                locked_slots: AtomicUsize::new(0),
                locked_bytes: AtomicUsize::new(0),
                cuda_slots: AtomicUsize::new(0),
                owner: std::process::id(),
            }),
        }
    }

    /// Take a slot of at least `bytes` for filling. Waits (up to `timeout`) for a slot to come
    /// back; allocates while fewer than `config.slots` exist; grows beyond that only when
    /// `starving()` says the consumer is blocked with nothing ready.
    pub fn acquire(
        &self,
        bytes: usize,
        timeout: Duration,
        starving: impl Fn() -> bool,
    ) -> Result<Arc<Lease>, AcquireError> {
        let shared = &self.shared;
        let step = shared.signal.wait_for(timeout, || {
            if shared.closed.load(Ordering::SeqCst) {
                return Some(Step::Stop(AcquireError::Closed));
            }
            if let Some(buffer) = shared.free.pop() {
                return Some(Step::Reuse(buffer));
            }
            let target = shared.config.slots.max(1);
            let reserve = |grown| {
                shared
                    .slots
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        (grown || n < target).then_some(n + 1)
                    })
                    .is_ok()
            };
            if reserve(false) {
                return Some(Step::Allocate { grown: false });
            }
            if starving() && reserve(true) {
                return Some(Step::Allocate { grown: true });
            }
            None
        });
        let buffer = match step {
            None => return Err(AcquireError::TimedOut),
            Some(Step::Stop(error)) => return Err(error),
            Some(Step::Reuse(buffer)) if buffer.capacity() >= bytes => buffer,
            Some(Step::Reuse(small)) => {
                // Batches grew (e.g. padded_batch): replace the slot, never truncate.
                shared.release_memory(small);
                self.allocate(bytes)?
            }
            Some(Step::Allocate { grown }) => {
                let buffer = self.allocate(bytes)?;
                if grown {
                    shared.grown.fetch_add(1, Ordering::SeqCst);
                }
                buffer
            }
        };
        shared.leased.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(Lease {
            buffer: Some(buffer),
            shared: Arc::clone(shared),
        }))
    }

    /// Allocate memory for a slot already counted in `slots`; undo the count on failure.
    fn allocate(&self, bytes: usize) -> Result<HostBuffer, AcquireError> {
        let shared = &self.shared;
        let fail = |error| {
            shared.slots.fetch_sub(1, Ordering::SeqCst);
            shared.signal.notify();
            Err(error)
        };
        if let Some(max_bytes) = shared.config.max_bytes {
            let fits = || shared.bytes.load(Ordering::SeqCst).saturating_add(bytes) <= max_bytes;
            if !fits() {
                // Free slots count against the cap too (e.g. small ones left behind when
                // batches grew): give them back before refusing, so that a refusal only ever
                // means memory that batches really hold.
                shared.drain_free();
            }
            if !fits() {
                return fail(AcquireError::Exhausted {
                    requested: bytes,
                    held: shared.bytes.load(Ordering::SeqCst),
                    max_bytes,
                });
            }
        }
        match HostBuffer::allocate(bytes, shared.config.lock, shared.config.cuda) {
            Some(buffer) => {
                shared.account_new(&buffer);
                // Room for every slot in the free list, so that returning one never allocates.
                shared.free.reserve(shared.slots.load(Ordering::SeqCst));
                Ok(buffer)
            }
            None => fail(AcquireError::AllocationFailed { bytes }),
        }
    }

    /// Wake a producer blocked in [`Pool::acquire`] so it re-evaluates `starving()`.
    pub fn wake(&self) {
        self.shared.signal.notify();
    }

    /// Stop handing out slots, wake every waiter and free every slot nobody holds. Slots still
    /// leased are freed when their last reference drops.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.drain_free();
        self.shared.signal.notify();
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        PoolStats {
            slots: s.slots.load(Ordering::SeqCst),
            free: s.free.len(),
            leased: s.leased.load(Ordering::SeqCst),
            bytes: s.bytes.load(Ordering::SeqCst),
            grown: s.grown.load(Ordering::SeqCst),
            locked_slots: s.locked_slots.load(Ordering::SeqCst),
            locked_bytes: s.locked_bytes.load(Ordering::SeqCst),
            cuda_slots: s.cuda_slots.load(Ordering::SeqCst),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    const SHORT: Duration = Duration::from_millis(20);
    const LONG: Duration = Duration::from_secs(10);

    fn pool(slots: usize, max_bytes: Option<usize>) -> Pool {
        Pool::new(PoolConfig {
            slots,
            max_bytes,
            lock: false,
            cuda: false,
        })
    }

    #[test]
    fn allocates_up_to_the_slot_count_then_waits() {
        let pool = pool(2, None);
        let a = pool.acquire(100, SHORT, || false).unwrap();
        let b = pool.acquire(100, SHORT, || false).unwrap();
        assert_ne!(a.buffer().as_ptr(), b.buffer().as_ptr());
        assert_eq!(
            pool.acquire(100, SHORT, || false).err(),
            Some(AcquireError::TimedOut)
        );
        let address = a.buffer().as_ptr();
        drop(a);
        let c = pool.acquire(100, SHORT, || false).unwrap();
        assert_eq!(c.buffer().as_ptr(), address, "the returned slot is reused");
        assert_eq!(pool.stats().slots, 2);
        drop((b, c));
        assert_eq!(pool.stats().leased, 0);
        assert_eq!(pool.stats().free, 2);
    }

    #[test]
    fn a_slot_returns_only_when_the_last_reference_drops() {
        let pool = pool(1, None);
        let lease = pool.acquire(64, SHORT, || false).unwrap();
        let export_a = Arc::clone(&lease);
        let export_b = Arc::clone(&lease);
        drop(lease);
        drop(export_a);
        assert_eq!(
            pool.acquire(64, SHORT, || false).err(),
            Some(AcquireError::TimedOut)
        );
        drop(export_b);
        assert!(pool.acquire(64, SHORT, || false).is_ok());
    }

    #[test]
    fn writing_requires_exclusive_ownership() {
        let pool = pool(1, None);
        let mut lease = pool.acquire(64, SHORT, || false).unwrap();
        Arc::get_mut(&mut lease)
            .unwrap()
            .buffer_mut()
            .as_mut_slice()[0] = 1;
        let export = Arc::clone(&lease);
        assert!(
            Arc::get_mut(&mut lease).is_none(),
            "no writes once exported"
        );
        assert_eq!(export.buffer().as_slice()[0], 1);
    }

    #[test]
    fn grows_only_when_starving_and_respects_the_cap() {
        let pool = pool(1, Some(3 * 4096));
        let _a = pool.acquire(4096, SHORT, || false).unwrap();
        assert_eq!(
            pool.acquire(4096, SHORT, || false).err(),
            Some(AcquireError::TimedOut)
        );
        let _b = pool.acquire(4096, SHORT, || true).unwrap();
        let _c = pool.acquire(4096, SHORT, || true).unwrap();
        assert_eq!(pool.stats().grown, 2);
        match pool.acquire(4096, SHORT, || true) {
            Err(AcquireError::Exhausted {
                requested: 4096,
                held: 12288,
                max_bytes: 12288,
            }) => {}
            other => panic!("expected Exhausted, got {:?}", other.err()),
        }
        assert_eq!(
            pool.stats().slots,
            3,
            "a refused growth leaves no phantom slot"
        );
    }

    #[test]
    fn free_slots_are_reclaimed_before_the_cap_refuses() {
        // Batches that grow leave free slots behind; with nothing held, the cap must reclaim
        // them rather than report memory "held by batches".
        let pool = pool(3, Some(4 * 4096));
        let small: Vec<_> = (0..3)
            .map(|_| pool.acquire(4096, SHORT, || false).unwrap())
            .collect();
        drop(small);
        assert_eq!((pool.stats().slots, pool.stats().free), (3, 3));
        let big = pool.acquire(4 * 4096, SHORT, || false).unwrap();
        assert_eq!(big.buffer().capacity(), 4 * 4096);
        let stats = pool.stats();
        assert_eq!((stats.slots, stats.bytes), (1, 4 * 4096), "{stats:?}");
        // Held memory is refused, and the message counts only that.
        let held = pool.acquire(4096, SHORT, || true);
        match held {
            Err(AcquireError::Exhausted { held, .. }) => assert_eq!(held, 4 * 4096),
            other => panic!("expected Exhausted, got {:?}", other.err()),
        }
    }

    #[test]
    fn small_slots_are_replaced_by_larger_ones() {
        let pool = pool(1, None);
        drop(pool.acquire(100, SHORT, || false).unwrap());
        let big = pool.acquire(3 * 4096 + 1, SHORT, || false).unwrap();
        assert!(big.buffer().capacity() > 3 * 4096);
        assert_eq!(pool.stats().slots, 1);
        assert_eq!(pool.stats().bytes, big.buffer().capacity());
    }

    #[test]
    fn close_wakes_a_blocked_producer_and_frees_memory() {
        let pool = pool(1, None);
        let held = pool.acquire(4096, SHORT, || false).unwrap();
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.acquire(4096, LONG, || false).err())
        };
        std::thread::sleep(Duration::from_millis(50));
        pool.close();
        assert_eq!(waiter.join().unwrap(), Some(AcquireError::Closed));
        assert_eq!(pool.stats().slots, 1, "a held slot outlives close");
        drop(held);
        let stats = pool.stats();
        assert_eq!((stats.slots, stats.bytes, stats.leased), (0, 0, 0));
    }

    #[test]
    fn many_threads_return_slots_out_of_order() {
        let pool = pool(8, None);
        let rounds = 2000;
        let (sender, receiver) = std::sync::mpsc::channel::<Arc<Lease>>();
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
        let returners: Vec<_> = (0..4)
            .map(|_| {
                let receiver = std::sync::Arc::clone(&receiver);
                std::thread::spawn(move || loop {
                    let next = receiver.lock().unwrap().recv();
                    match next {
                        // Hold a little, so returns interleave out of order.
                        Ok(lease) => {
                            std::thread::yield_now();
                            drop(lease)
                        }
                        Err(_) => break,
                    }
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for i in 0..rounds {
            let mut lease = pool.acquire(4096, LONG, || false).unwrap();
            let slice = Arc::get_mut(&mut lease)
                .unwrap()
                .buffer_mut()
                .as_mut_slice();
            slice[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seen.insert(lease.buffer().as_ptr() as usize);
            sender.send(lease).unwrap();
        }
        drop(sender);
        for r in returners {
            r.join().unwrap();
        }
        let stats = pool.stats();
        assert_eq!(stats.leased, 0);
        assert_eq!(stats.free, 8);
        assert_eq!(stats.slots, 8);
        assert_eq!(seen.len(), 8, "only the 8 slots were ever used");
    }
}
