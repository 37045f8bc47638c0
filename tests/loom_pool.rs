//! Model check of the slot pool (`src/pool.rs`) and its notifier (`src/notify.rs`) with loom.
//!
//! Under `--cfg loom` the crate swaps its atomics, mutexes, condition variables and `Arc` for
//! loom's (see `src/sync.rs`), so these models explore every interleaving of the very code the
//! extension runs, up to a preemption bound. What each model proves:
//!
//! * `out_of_order_returns_from_several_threads`: leases (and clones of them, as DLPack exports
//!   hold) dropped in any order from several threads each return their slot exactly once; a
//!   slot is never handed out again while any clone of its lease is alive (readers see the
//!   value written for their batch, never the next batch's).
//! * `close_racing_with_returns_frees_everything_once` and
//!   `close_racing_with_a_blocked_acquire`: whatever the order of `close()` and the last
//!   drops, every buffer is freed exactly once (a counting allocator sees as many page-aligned
//!   frees as allocations) and the stats end at zero slots, zero bytes, zero leases.
//! * `a_return_wakes_a_blocked_producer` and `a_wake_lets_a_starving_producer_grow`: loom has
//!   no time, so a timed wait is a plain wait (`src/notify.rs`); a lost wake-up leaves the
//!   producer asleep forever, which loom reports as a deadlock and fails the test.
//! * `growth_racing_with_a_return_keeps_counts_consistent`: whether the producer reuses the
//!   returned slot or grows first, `slots == 1 + grown` and every byte is accounted.
//! * `a_small_slot_replaced_by_a_larger_one_while_close_races`: replacing a too-small slot
//!   while `close()` runs frees both buffers exactly once.
//! * `growth_respects_the_byte_cap`: a refused growth leaves no phantom slot and wakes nobody
//!   into a deadlock.
//! * Two negative controls prove the checks can fail: a wait nobody signals is reported as a
//!   deadlock, and a leaked lease is reported by the allocator check.
//!
//! Run (about 25 s of model checking in release mode, plus the build):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" PYO3_PYTHON=$(which python3) CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --test loom_pool
//! ```
//!
//! `LOOM_MAX_PREEMPTIONS` overrides the default preemption bound of 5 below (5: about 25 s
//! on a 2-core machine; 4: about 5 s).
#![cfg(loom)]

use fastbridge_core::memory::PAGE;
use fastbridge_core::pool::{AcquireError, Lease, Pool, PoolConfig, PoolStats};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

/// loom has no clock: a timed wait is an untimed one, so this only has to be "not zero".
const LONG: Duration = Duration::from_secs(3600);

// -- a counting allocator: slot buffers are the only page-aligned allocations -----------------

struct Counting;

thread_local! {
    // loom runs every modelled thread as a coroutine on the test's own OS thread, so a
    // thread-local counter sees exactly one model's allocations, even with the test harness
    // running several models in parallel on different OS threads.
    static LIVE_SLOT_BUFFERS: Cell<isize> = const { Cell::new(0) };
    static SLOT_BUFFERS_ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn is_slot_buffer(layout: Layout) -> bool {
    layout.align() == PAGE && layout.size() >= PAGE
}

// SAFETY: forwards every call to the system allocator unchanged; the counters are
// const-initialised thread-locals (no allocation, `try_with` tolerates thread teardown).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() && is_slot_buffer(layout) {
            let _ = LIVE_SLOT_BUFFERS.try_with(|n| n.set(n.get() + 1));
            let _ = SLOT_BUFFERS_ALLOCATED.try_with(|n| n.set(n.get() + 1));
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() && is_slot_buffer(layout) {
            let _ = LIVE_SLOT_BUFFERS.try_with(|n| n.set(n.get() + 1));
            let _ = SLOT_BUFFERS_ALLOCATED.try_with(|n| n.set(n.get() + 1));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_slot_buffer(layout) {
            let _ = LIVE_SLOT_BUFFERS.try_with(|n| n.set(n.get() - 1));
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_slot_buffers() -> isize {
    LIVE_SLOT_BUFFERS.with(Cell::get)
}

/// Run `f` under loom, checking after every explored execution that no slot buffer outlived
/// it and none was freed twice.
fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&executions);
    let allocated_before = SLOT_BUFFERS_ALLOCATED.with(Cell::get);
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(5);
    }
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let before = live_slot_buffers();
        f();
        assert_eq!(
            live_slot_buffers(),
            before,
            "every slot buffer allocated in this execution is freed exactly once"
        );
    });
    let executions = executions.load(std::sync::atomic::Ordering::Relaxed);
    let allocated = SLOT_BUFFERS_ALLOCATED.with(Cell::get) - allocated_before;
    // Shown with `cargo test -- --nocapture`: proof that interleavings were explored and
    // that the allocator really saw the slot buffers.
    println!("{executions} interleavings explored, {allocated} slot buffers allocated and freed");
    assert!(executions > 1, "loom explored a single interleaving");
    assert!(allocated > 0, "the counting allocator saw no slot buffer");
}

fn pool(slots: usize, max_bytes: Option<usize>) -> Pool {
    Pool::new(PoolConfig {
        slots,
        max_bytes,
        lock: false,
        cuda: false,
    })
}

/// Acquire a slot and write `tag` into its first byte, as the producer fills a batch.
fn fill(pool: &Pool, tag: u8, starving: impl Fn() -> bool) -> Arc<Lease> {
    fill_sized(pool, PAGE, tag, starving)
}

fn fill_sized(pool: &Pool, bytes: usize, tag: u8, starving: impl Fn() -> bool) -> Arc<Lease> {
    let mut lease = pool.acquire(bytes, LONG, starving).expect("a slot");
    let buffer = Arc::get_mut(&mut lease)
        .expect("a fresh lease is unique: FILLING")
        .buffer_mut();
    buffer.as_mut_slice()[0] = tag;
    lease
}

fn tag(lease: &Lease) -> u8 {
    lease.buffer().as_slice()[0]
}

fn assert_empty(stats: &PoolStats) {
    assert_eq!(
        (stats.slots, stats.bytes, stats.leased, stats.free),
        (0, 0, 0, 0),
        "a closed pool with no leases holds nothing: {stats:?}"
    );
}

#[test]
fn out_of_order_returns_from_several_threads() {
    model(|| {
        let pool = pool(2, None);
        let a = fill(&pool, 1, || false);
        let b = fill(&pool, 2, || false);
        let a_export = Arc::clone(&a);

        // Two "deleters" on two threads: one drops b then a, the other a's export.
        let first = thread::spawn(move || {
            assert_eq!(tag(&b), 2, "batch b unchanged while held");
            drop(b);
            assert_eq!(tag(&a), 1, "batch a unchanged while held");
            drop(a);
        });
        let second = thread::spawn(move || {
            thread::yield_now();
            assert_eq!(tag(&a_export), 1, "batch a unchanged while exported");
            drop(a_export);
        });

        // Meanwhile the producer needs a slot: it blocks until b (or a and its export) are
        // gone, then overwrites it. If it were handed a slot still held, a reader above would
        // see 3.
        let c = fill(&pool, 3, || false);
        first.join().unwrap();
        second.join().unwrap();

        let stats = pool.stats();
        assert_eq!(stats.slots, 2, "no slot was lost or duplicated: {stats:?}");
        assert_eq!(stats.leased, 1);
        assert_eq!(stats.free, 1);
        assert_eq!(stats.grown, 0);
        assert_eq!(tag(&c), 3);
        drop(c);
        assert_eq!(pool.stats().free, 2);
        pool.close();
        assert_empty(&pool.stats());
    });
}

#[test]
fn close_racing_with_returns_frees_everything_once() {
    model(|| {
        let pool = pool(2, None);
        let a = fill(&pool, 1, || false);
        let b = fill(&pool, 2, || false);
        // One slot already free when close runs, the other returned concurrently.
        drop(b);
        let a_export = Arc::clone(&a);

        let returner = thread::spawn(move || drop(a));
        let closer = {
            let pool = pool.clone();
            thread::spawn(move || pool.close())
        };
        drop(a_export);
        returner.join().unwrap();
        closer.join().unwrap();

        assert!(pool.is_closed());
        assert_empty(&pool.stats());
        assert_eq!(
            pool.acquire(PAGE, LONG, || true).err(),
            Some(AcquireError::Closed)
        );
    });
}

#[test]
fn close_racing_with_a_blocked_acquire() {
    model(|| {
        let pool = pool(1, None);
        let held = fill(&pool, 1, || false);

        let producer = {
            let pool = pool.clone();
            thread::spawn(move || {
                // Either the returned slot or Closed; never a hang, never a slot after close
                // that outlives its lease.
                match pool.acquire(PAGE, LONG, || false) {
                    Ok(lease) => drop(lease),
                    Err(error) => assert_eq!(error, AcquireError::Closed),
                }
            })
        };
        let returner = thread::spawn(move || drop(held));
        pool.close();
        producer.join().unwrap();
        returner.join().unwrap();

        assert_empty(&pool.stats());
    });
}

#[test]
fn a_return_wakes_a_blocked_producer() {
    model(|| {
        let pool = pool(1, None);
        let lease = fill(&pool, 1, || false);
        let export = Arc::clone(&lease);

        // The last of the two references may be dropped by either thread.
        let deleter = thread::spawn(move || drop(export));
        let batch_holder = thread::spawn(move || drop(lease));

        // Blocks (a plain wait under loom) until the slot is back: a lost wake-up deadlocks.
        let again = fill(&pool, 2, || false);
        deleter.join().unwrap();
        batch_holder.join().unwrap();

        let stats = pool.stats();
        assert_eq!((stats.slots, stats.leased, stats.grown), (1, 1, 0));
        drop(again);
        pool.close();
        assert_empty(&pool.stats());
    });
}

#[test]
fn a_wake_lets_a_starving_producer_grow() {
    model(|| {
        let pool = pool(1, None);
        let starving = Arc::new(AtomicBool::new(false));
        // The consumer keeps its batch and then waits for the next one (list(stream(ds))).
        let kept = fill(&pool, 1, || false);

        let consumer = {
            let pool = pool.clone();
            let starving = Arc::clone(&starving);
            thread::spawn(move || {
                starving.store(true, Ordering::SeqCst);
                pool.wake();
            })
        };

        // The producer blocks with every slot leased until the consumer says it starves; a
        // lost wake-up deadlocks.
        let flag = Arc::clone(&starving);
        let grown = fill(&pool, 2, move || flag.load(Ordering::SeqCst));
        consumer.join().unwrap();

        let stats = pool.stats();
        assert_eq!(
            (stats.slots, stats.leased, stats.grown),
            (2, 2, 1),
            "{stats:?}"
        );
        assert_ne!(kept.buffer().as_ptr(), grown.buffer().as_ptr());
        assert_eq!(tag(&kept), 1, "the kept batch is untouched by growth");
        pool.close();
        assert_eq!(pool.stats().slots, 2, "leased slots outlive close");
        drop(kept);
        drop(grown);
        assert_empty(&pool.stats());
    });
}

#[test]
fn growth_racing_with_a_return_keeps_counts_consistent() {
    model(|| {
        let pool = pool(1, None);
        let starving = Arc::new(AtomicBool::new(false));
        let kept = fill(&pool, 1, || false);

        // The consumer gives its batch back and starts waiting at the same time.
        let consumer = {
            let pool = pool.clone();
            let starving = Arc::clone(&starving);
            thread::spawn(move || {
                drop(kept);
                starving.store(true, Ordering::SeqCst);
                pool.wake();
            })
        };
        let flag = Arc::clone(&starving);
        let next = fill(&pool, 2, move || flag.load(Ordering::SeqCst));
        consumer.join().unwrap();

        // Reused (no growth) or grew before the return landed: either way the counts agree.
        let stats = pool.stats();
        assert_eq!(stats.slots, 1 + stats.grown, "{stats:?}");
        assert_eq!(stats.leased, 1);
        assert_eq!(stats.free, stats.slots - 1);
        assert_eq!(stats.bytes, stats.slots * PAGE);
        drop(next);
        pool.close();
        assert_empty(&pool.stats());
    });
}

#[test]
fn a_small_slot_replaced_by_a_larger_one_while_close_races() {
    model(|| {
        let pool = pool(1, None);
        let small = fill(&pool, 1, || false);

        let returner = thread::spawn(move || drop(small));
        let closer = {
            let pool = pool.clone();
            thread::spawn(move || pool.close())
        };
        // Needs two pages: the returned one-page slot is freed and replaced, or the pool is
        // closed first.
        match pool.acquire(2 * PAGE, LONG, || false) {
            Ok(big) => {
                assert!(big.buffer().capacity() >= 2 * PAGE);
                drop(big);
            }
            Err(error) => assert_eq!(error, AcquireError::Closed),
        }
        returner.join().unwrap();
        closer.join().unwrap();

        assert_empty(&pool.stats());
    });
}

#[test]
fn growth_respects_the_byte_cap() {
    model(|| {
        // Room for exactly one slot: growth must fail cleanly while a return still succeeds.
        let pool = pool(1, Some(PAGE));
        let kept = fill(&pool, 1, || false);

        let returner = thread::spawn(move || drop(kept));
        match pool.acquire(PAGE, LONG, || true) {
            // The slot came back first (or the producer waited for it after a refusal).
            Ok(lease) => {
                assert_eq!(pool.stats().slots, 1);
                drop(lease);
            }
            Err(AcquireError::Exhausted {
                requested,
                max_bytes,
                ..
            }) => {
                assert_eq!((requested, max_bytes), (PAGE, PAGE));
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
        returner.join().unwrap();

        let stats = pool.stats();
        assert_eq!(
            (stats.slots, stats.bytes, stats.leased),
            (1, PAGE, 0),
            "a refused growth leaves no phantom slot: {stats:?}"
        );
        pool.close();
        assert_empty(&pool.stats());
    });
}

// -- negative controls: the checker itself must catch the bugs the models above rule out -----

#[test]
#[should_panic(expected = "deadlock")]
fn control_a_wait_nobody_signals_is_reported_as_a_deadlock() {
    // A producer waiting for a slot that is never returned: exactly what a lost wake-up looks
    // like to loom. If this did not panic, the "no lost wake-up" models would prove nothing.
    model(|| {
        // ManuallyDrop: loom aborts if its objects are dropped while the deadlock unwinds.
        let pool = std::mem::ManuallyDrop::new(pool(1, None));
        let _held = std::mem::ManuallyDrop::new(fill(&pool, 1, || false));
        let _never = pool.acquire(PAGE, LONG, || false);
    });
}

#[test]
#[should_panic(expected = "freed exactly once")]
fn control_a_leaked_lease_is_reported() {
    // A lease that is never dropped keeps its buffer: the allocator check must notice.
    model(|| {
        let pool = pool(1, None);
        let lease = fill(&pool, 1, || false);
        std::mem::forget(lease);
    });
}
