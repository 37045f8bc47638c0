//! Page-aligned host memory for slots: allocation, page locking, and CUDA host registration.
//!
//! This is one of the four places in the crate with `unsafe` code (with [`crate::copy`],
//! [`crate::dlpack`] and [`crate::cuda`]). A [`HostBuffer`] owns its allocation exclusively; ownership moves between
//! the free list, the producer and a lease, so the safe code elsewhere never aliases a buffer
//! mutably while it is exported.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
// A plain std atomic even under loom: ids only need to be unique, not modelled.
use std::sync::atomic::{AtomicU64, Ordering};

/// The id the next allocation gets; see [`HostBuffer::id`].
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Alignment of every slot: one page, so that slots can be locked and registered with a GPU
/// driver page by page, and every 64-byte leaf offset inside it stays 64-byte aligned.
pub const PAGE: usize = 4096;
/// Alignment of every leaf inside a slot; what XLA's CPU client needs to alias instead of copy.
pub const LEAF_ALIGN: usize = 64;

/// How a buffer's pages are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinning {
    /// `mlock` succeeded: the pages stay resident and never fault on reuse.
    pub locked: bool,
    /// Registered with the CUDA driver as page-locked host memory (DMA-able).
    pub cuda: bool,
}

/// An exclusively owned, zero-initialised, page-aligned allocation.
pub struct HostBuffer {
    ptr: NonNull<u8>,
    capacity: usize,
    pinning: Pinning,
    id: u64,
}

// SAFETY: a HostBuffer is plain memory with a single owner; moving it to another thread moves
// that ownership. Shared access only happens through `&HostBuffer`, which hands out a raw
// pointer for DLPack export while the buffer is held by an immutable lease.
unsafe impl Send for HostBuffer {}
// SAFETY: `&HostBuffer` exposes no interior mutability; see `Send` above.
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    /// Allocate at least `len` bytes (rounded up to whole pages, at least one page), then try
    /// to lock the pages (`lock`) and register them with CUDA (`cuda`). Both fall back silently:
    /// [`HostBuffer::pinning`] says what was achieved.
    pub fn allocate(len: usize, lock: bool, cuda: bool) -> Option<Self> {
        let capacity = len.max(1).checked_next_multiple_of(PAGE)?;
        let layout = Layout::from_size_align(capacity, PAGE).ok()?;
        // SAFETY: `layout` has a non-zero size (at least one page) and a power-of-two alignment.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw)?;
        let mut buffer = Self {
            ptr,
            capacity,
            pinning: Pinning {
                locked: false,
                cuda: false,
            },
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        };
        buffer.pinning.locked = lock && buffer.lock_pages();
        if !buffer.pinning.locked {
            buffer.prefault();
        }
        #[cfg(not(loom))]
        {
            buffer.pinning.cuda = cuda && crate::cuda::register(buffer.ptr.as_ptr(), capacity);
        }
        #[cfg(loom)]
        let _ = cuda;
        Some(buffer)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn pinning(&self) -> Pinning {
        self.pinning
    }

    /// Unique for the life of the process: a new allocation at a freed buffer's address gets a
    /// new id, so a registration keyed by address (a JAX client's `dma_map`) can tell the two apart.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Start address, for DLPack export and for tests that prove aliasing.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The whole buffer, writable. Requires `&mut self`: only the exclusive owner (the producer
    /// filling the slot) can write, never while a lease has exported it.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is valid for `capacity` bytes (allocated above, zero-initialised, so
        // every byte is initialised) and `&mut self` guarantees no other reference exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    /// The whole buffer, read-only.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: valid and initialised as above; shared access matches `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity) }
    }

    /// Touch every page once so that the first fill does not pay page faults.
    fn prefault(&mut self) {
        for page in self.as_mut_slice().chunks_mut(PAGE) {
            // A volatile write keeps the compiler from proving the zero store redundant.
            // SAFETY: `page` is a valid, exclusively borrowed, non-empty slice.
            unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
        }
    }

    #[cfg(unix)]
    fn lock_pages(&mut self) -> bool {
        // SAFETY: the range is exactly our own live allocation; mlock has no other precondition
        // and fails cleanly (ENOMEM/EPERM) when RLIMIT_MEMLOCK does not allow it.
        unsafe { libc::mlock(self.ptr.as_ptr().cast(), self.capacity) == 0 }
    }

    #[cfg(not(unix))]
    fn lock_pages(&mut self) -> bool {
        false
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        #[cfg(not(loom))]
        if self.pinning.cuda {
            crate::cuda::unregister(self.ptr.as_ptr());
        }
        #[cfg(unix)]
        if self.pinning.locked {
            // SAFETY: same range that was locked in `allocate`.
            unsafe { libc::munlock(self.ptr.as_ptr().cast(), self.capacity) };
        }
        // SAFETY: allocated in `allocate` with exactly this layout (the size and alignment were
        // validated there), and never freed before: Drop runs once.
        unsafe {
            dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.capacity, PAGE),
            )
        };
    }
}

/// Round `offset` up to the next multiple of [`LEAF_ALIGN`].
pub fn align_leaf(offset: usize) -> usize {
    offset.next_multiple_of(LEAF_ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_and_zeroed() {
        for len in [0, 1, 4095, 4096, 4097, 1 << 20] {
            let buffer = HostBuffer::allocate(len, false, false).unwrap();
            assert_eq!(buffer.as_ptr() as usize % PAGE, 0);
            assert!(buffer.capacity() >= len.max(1));
            assert_eq!(buffer.capacity() % PAGE, 0);
            assert!(buffer.as_slice().iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn locking_is_opt_in_and_never_required() {
        let unlocked = HostBuffer::allocate(1 << 16, false, false).unwrap();
        assert!(!unlocked.pinning().locked);
        // Whether mlock succeeds depends on RLIMIT_MEMLOCK; either way the buffer must work.
        let mut locked = HostBuffer::allocate(1 << 16, true, false).unwrap();
        locked.as_mut_slice()[12345] = 7;
        assert_eq!(locked.as_slice()[12345], 7);
        assert!(
            !locked.pinning().cuda,
            "CUDA registration was not asked for"
        );
    }

    #[test]
    fn leaf_offsets_are_64_byte_aligned() {
        assert_eq!(align_leaf(0), 0);
        assert_eq!(align_leaf(1), 64);
        assert_eq!(align_leaf(64), 64);
        assert_eq!(align_leaf(65), 128);
    }
}
