//! Optional CUDA host registration through a dynamically loaded driver.
//!
//! The wheel never links CUDA: `libcuda.so.1` (or `nvcuda.dll`) is opened at run time the first
//! time a slot asks to be registered. Without a driver, or without a GPU, [`register`] returns
//! `false` and slots stay ordinary (possibly `mlock`ed) host memory.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;

const CUDA_SUCCESS: CuResult = 0;
/// Pinned for every CUDA context, not only the one current at registration time.
const CU_MEMHOSTREGISTER_PORTABLE: c_uint = 0x01;

struct Driver {
    // Keeps the library mapped for as long as the function pointers below are used.
    _library: libloading::Library,
    context: usize,
    push_context: unsafe extern "C" fn(CuContext) -> CuResult,
    pop_context: unsafe extern "C" fn(*mut CuContext) -> CuResult,
    host_register: unsafe extern "C" fn(*mut c_void, usize, c_uint) -> CuResult,
    host_unregister: unsafe extern "C" fn(*mut c_void) -> CuResult,
}

static DRIVER: OnceLock<Option<Driver>> = OnceLock::new();

#[cfg(target_os = "windows")]
const LIBRARY: &str = "nvcuda.dll";
#[cfg(not(target_os = "windows"))]
const LIBRARY: &str = "libcuda.so.1";

fn load() -> Option<Driver> {
    // SAFETY: loading the CUDA driver runs its initialisers, which have no preconditions. Every
    // symbol is looked up by its documented name and cast to its documented C signature
    // (CUDA Driver API, stable since CUDA 4.0; `_v2` names are the ABI the headers select).
    unsafe {
        let library = libloading::Library::new(LIBRARY).ok()?;
        let init: libloading::Symbol<unsafe extern "C" fn(c_uint) -> CuResult> =
            library.get(b"cuInit\0").ok()?;
        let device_get: libloading::Symbol<unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult> =
            library.get(b"cuDeviceGet\0").ok()?;
        let retain: libloading::Symbol<unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult> =
            library.get(b"cuDevicePrimaryCtxRetain\0").ok()?;
        let push_context = *library.get(b"cuCtxPushCurrent_v2\0").ok()?;
        let pop_context = *library.get(b"cuCtxPopCurrent_v2\0").ok()?;
        let host_register = *library.get(b"cuMemHostRegister_v2\0").ok()?;
        let host_unregister = *library.get(b"cuMemHostUnregister\0").ok()?;
        if init(0) != CUDA_SUCCESS {
            return None;
        }
        let mut device: CuDevice = 0;
        if device_get(&mut device, 0) != CUDA_SUCCESS {
            return None;
        }
        // The primary context is the one JAX/XLA uses too; it is retained for the life of the
        // process so that registrations stay valid.
        let mut context: CuContext = std::ptr::null_mut();
        if retain(&mut context, device) != CUDA_SUCCESS || context.is_null() {
            return None;
        }
        Some(Driver {
            _library: library,
            context: context as usize,
            push_context,
            pop_context,
            host_register,
            host_unregister,
        })
    }
}

fn driver() -> Option<&'static Driver> {
    DRIVER.get_or_init(load).as_ref()
}

/// Whether a CUDA driver with at least one device could be opened in this process.
pub fn available() -> bool {
    driver().is_some()
}

fn with_context<R>(driver: &Driver, f: impl FnOnce() -> R) -> Option<R> {
    // SAFETY: `context` is the retained primary context (never released); push/pop are
    // balanced on this thread.
    unsafe {
        if (driver.push_context)(driver.context as CuContext) != CUDA_SUCCESS {
            return None;
        }
        let result = f();
        let mut popped: CuContext = std::ptr::null_mut();
        (driver.pop_context)(&mut popped);
        Some(result)
    }
}

/// Register `len` bytes at `ptr` as page-locked host memory; `false` when not possible.
pub fn register(ptr: *mut u8, len: usize) -> bool {
    let Some(driver) = driver() else { return false };
    with_context(driver, || {
        // SAFETY: the caller passes a live, page-aligned allocation of `len` bytes that it
        // unregisters (through `unregister`) before freeing.
        unsafe { (driver.host_register)(ptr.cast(), len, CU_MEMHOSTREGISTER_PORTABLE) }
    }) == Some(CUDA_SUCCESS)
}

/// Undo [`register`] before the memory is freed.
pub fn unregister(ptr: *mut u8) {
    if let Some(driver) = driver() {
        // SAFETY: `ptr` was registered by `register` and is still allocated.
        let _ = with_context(driver, || unsafe { (driver.host_unregister)(ptr.cast()) });
    }
}
