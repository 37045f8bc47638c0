//! DLPack export of slot memory: the C structs, the capsules, and their deleters.
//!
//! One of the crate's four `unsafe` modules (with [`crate::memory`], [`crate::copy`] and
//! [`crate::cuda`]). Each export boxes a [`Holder`] that owns a clone
//! of the slot's lease; the capsule points at the managed tensor inside it. The consumer
//! (JAX) renames the capsule when it takes ownership and later calls the deleter, from any
//! thread and without the GIL: the deleter only drops the box, which drops the lease and may
//! return the slot (pure Rust, no Python, never blocks for long, never unwinds).
//!
//! Layouts follow `dlpack.h` v1.1 (<https://github.com/dmlc/dlpack>).

use crate::pool::Lease;
use crate::sync::Arc;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;
use std::ffi::{c_void, CStr};
use std::ptr::NonNull;

pub const DEVICE_CPU: i32 = 1;
pub const DEVICE_CUDA_HOST: i32 = 3;

/// DLPack type codes (`DLDataTypeCode` in `dlpack.h`).
const INT: u8 = 0;
const UINT: u8 = 1;
const FLOAT: u8 = 2;
const BFLOAT: u8 = 4;
const COMPLEX: u8 = 5;
const BOOL: u8 = 6;

/// (NumPy dtype name, DLPack type code, bits) of every dtype a leaf can be exported as; what
/// the Python layer passes to `Slot.export` (`_core.DLPACK_TYPE_CODES`).
pub const TYPE_CODES: [(&str, u8, u8); 15] = [
    ("int8", INT, 8),
    ("int16", INT, 16),
    ("int32", INT, 32),
    ("int64", INT, 64),
    ("uint8", UINT, 8),
    ("uint16", UINT, 16),
    ("uint32", UINT, 32),
    ("uint64", UINT, 64),
    ("float16", FLOAT, 16),
    ("float32", FLOAT, 32),
    ("float64", FLOAT, 64),
    ("bfloat16", BFLOAT, 16),
    ("complex64", COMPLEX, 64),
    ("complex128", COMPLEX, 128),
    ("bool", BOOL, 8),
];

/// DLPack version we produce in versioned capsules.
pub const VERSION: (u32, u32) = (1, 1);
const FLAG_READ_ONLY: u64 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DLDevice {
    pub device_type: i32,
    pub device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DLDataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

/// What to export: a dense, row-major array inside a lease's buffer.
pub struct Export {
    pub lease: Arc<Lease>,
    pub offset: usize,
    pub shape: Vec<i64>,
    pub dtype: DLDataType,
    pub device: DLDevice,
}

/// Owns everything a managed tensor points at. `#[repr(C)]` with the managed tensor first, so
/// a pointer to the tensor is a pointer to the holder.
#[repr(C)]
struct Holder<M> {
    managed: M,
    shape: Vec<i64>,
    strides: Vec<i64>,
    _lease: Arc<Lease>,
}

fn row_major_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1].max(1);
    }
    strides
}

fn tensor(export: &Export, shape: &mut [i64], strides: &mut [i64]) -> DLTensor {
    // The data pointer is derived from the shared buffer; consumers that honour the versioned
    // read-only flag never write through it, and the legacy protocol has no way to say so
    // (documented: slot memory must not be written by consumers).
    let base = export.lease.buffer().as_ptr();
    DLTensor {
        data: base.wrapping_add(export.offset) as *mut c_void,
        device: export.device,
        ndim: shape.len() as i32,
        dtype: export.dtype,
        shape: shape.as_mut_ptr(),
        strides: strides.as_mut_ptr(),
        byte_offset: 0,
    }
}

/// What differs between the two capsule kinds: the managed tensor struct and its name.
trait ManagedTensor: Sized {
    /// The capsule name consumers look for.
    const NAME: &'static CStr;
    /// A managed tensor for `dl_tensor` that `deleter` frees; `manager_ctx` is set later.
    fn new(dl_tensor: DLTensor, deleter: unsafe extern "C" fn(*mut Self)) -> Self;
    fn set_manager_ctx(&mut self, context: *mut c_void);
}

impl ManagedTensor for DLManagedTensor {
    const NAME: &'static CStr = c"dltensor";

    fn new(dl_tensor: DLTensor, deleter: unsafe extern "C" fn(*mut Self)) -> Self {
        Self {
            dl_tensor,
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(deleter),
        }
    }

    fn set_manager_ctx(&mut self, context: *mut c_void) {
        self.manager_ctx = context;
    }
}

impl ManagedTensor for DLManagedTensorVersioned {
    const NAME: &'static CStr = c"dltensor_versioned";

    fn new(dl_tensor: DLTensor, deleter: unsafe extern "C" fn(*mut Self)) -> Self {
        Self {
            version: DLPackVersion {
                major: VERSION.0,
                minor: VERSION.1,
            },
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(deleter),
            flags: FLAG_READ_ONLY,
            dl_tensor,
        }
    }

    fn set_manager_ctx(&mut self, context: *mut c_void) {
        self.manager_ctx = context;
    }
}

/// The managed tensor's deleter, called by the consumer exactly once.
unsafe extern "C" fn delete<M: ManagedTensor>(managed: *mut M) {
    if managed.is_null() {
        return;
    }
    // Never unwind into C: a panic here (there is none to expect) aborts instead.
    let guard = AbortOnUnwind;
    // SAFETY: `managed` came from `Box::leak(Box<Holder<M>>)` in `capsule_of` (a holder
    // starts with its managed tensor), and the DLPack contract calls the deleter exactly once.
    drop(unsafe { Box::from_raw(managed.cast::<Holder<M>>()) });
    std::mem::forget(guard);
}

/// Capsule destructor: frees the tensor only if no consumer took it. A consumer renames the
/// capsule (`used_dltensor`) when it takes ownership and may keep this destructor attached, so
/// the name is checked before calling the deleter.
unsafe extern "C" fn capsule_destructor<M: ManagedTensor>(capsule: *mut ffi::PyObject) {
    // SAFETY: called by CPython with a live capsule and the GIL held.
    if unsafe { ffi::PyCapsule_IsValid(capsule, M::NAME.as_ptr()) } == 1 {
        // SAFETY: as above; a valid capsule of this name holds the pointer `capsule_of` gave.
        let managed = unsafe { ffi::PyCapsule_GetPointer(capsule, M::NAME.as_ptr()) };
        // SAFETY: nobody consumed the tensor (the capsule kept its name), so it is still ours
        // to free, once: CPython runs a capsule's destructor once.
        unsafe { delete::<M>(managed.cast()) };
    }
}

struct AbortOnUnwind;
impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        std::process::abort();
    }
}

/// Wrap `export` in a `dltensor` capsule (legacy, what JAX asks for) or, with `versioned`, a
/// read-only `dltensor_versioned` capsule.
pub fn capsule<'py>(
    py: Python<'py>,
    export: Export,
    versioned: bool,
) -> PyResult<Bound<'py, PyCapsule>> {
    if versioned {
        capsule_of::<DLManagedTensorVersioned>(py, export)
    } else {
        capsule_of::<DLManagedTensor>(py, export)
    }
}

fn capsule_of<'py, M: ManagedTensor>(
    py: Python<'py>,
    export: Export,
) -> PyResult<Bound<'py, PyCapsule>> {
    let mut shape = export.shape.clone();
    let mut strides = row_major_strides(&shape);
    let dl_tensor = tensor(&export, &mut shape, &mut strides);
    // Moving the vectors into the holder moves no elements: the pointers in `dl_tensor` stay
    // valid, and the holder never resizes them.
    let holder = NonNull::from(Box::leak(Box::new(Holder {
        managed: M::new(dl_tensor, delete::<M>),
        shape,
        strides,
        _lease: export.lease,
    })));
    // SAFETY: `holder` is the allocation just leaked, which nothing else references yet.
    unsafe {
        (*holder.as_ptr())
            .managed
            .set_manager_ctx(holder.as_ptr().cast())
    };
    // SAFETY: the pointer is a `Holder<M>`, whose first field is the managed tensor that
    // `capsule_destructor::<M>` frees when no consumer took it.
    unsafe {
        PyCapsule::new_with_pointer_and_destructor(
            py,
            holder.cast(),
            M::NAME,
            Some(capsule_destructor::<M>),
        )
    }
    .inspect_err(|_| {
        // SAFETY: no capsule was made, so the holder is still only ours; it is freed once.
        drop(unsafe { Box::from_raw(holder.as_ptr()) })
    })
}

#[cfg(test)]
mod tests {
    use super::row_major_strides;

    #[test]
    fn strides_are_row_major_in_elements() {
        assert_eq!(row_major_strides(&[]), Vec::<i64>::new());
        assert_eq!(row_major_strides(&[5]), vec![1]);
        assert_eq!(row_major_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(row_major_strides(&[2, 0, 4]), vec![4, 4, 1]);
    }
}
