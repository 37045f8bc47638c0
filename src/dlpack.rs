//! DLPack export of slot memory: the C structs, the capsules, and their deleters.
//!
//! One of the crate's four `unsafe` modules. Each export boxes a [`Holder`] that owns a clone
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
use std::ffi::{c_char, c_void, CStr};
use std::ptr::NonNull;

pub const DEVICE_CPU: i32 = 1;
pub const DEVICE_CUDA_HOST: i32 = 3;

/// DLPack version we produce in versioned capsules.
pub const VERSION: (u32, u32) = (1, 1);
const FLAG_READ_ONLY: u64 = 1 << 0;

const NAME_LEGACY: &CStr = c"dltensor";
const NAME_VERSIONED: &CStr = c"dltensor_versioned";

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

unsafe extern "C" fn delete_legacy(managed: *mut DLManagedTensor) {
    if managed.is_null() {
        return;
    }
    // Never unwind into C: a panic here (there is none to expect) aborts instead.
    let _guard = AbortOnUnwind;
    // SAFETY: `managed` came from `Box::into_raw(Box<Holder<DLManagedTensor>>)` in `capsule`
    // (its manager_ctx points at the same holder), and the DLPack contract calls the deleter
    // exactly once.
    drop(unsafe { Box::from_raw(managed.cast::<Holder<DLManagedTensor>>()) });
    std::mem::forget(_guard);
}

unsafe extern "C" fn delete_versioned(managed: *mut DLManagedTensorVersioned) {
    if managed.is_null() {
        return;
    }
    let _guard = AbortOnUnwind;
    // SAFETY: as in `delete_legacy`, for the versioned holder.
    drop(unsafe { Box::from_raw(managed.cast::<Holder<DLManagedTensorVersioned>>()) });
    std::mem::forget(_guard);
}

/// Capsule destructor: frees the tensor only if no consumer took it. A consumer renames the
/// capsule (`used_dltensor`) when it takes ownership and may keep this destructor attached, so
/// the name is checked before calling the deleter.
unsafe extern "C" fn capsule_destructor_legacy(capsule: *mut ffi::PyObject) {
    // SAFETY: called by CPython with a live capsule and the GIL held.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, NAME_LEGACY.as_ptr()) == 1 {
            let managed = ffi::PyCapsule_GetPointer(capsule, NAME_LEGACY.as_ptr());
            delete_legacy(managed.cast());
        }
    }
}

unsafe extern "C" fn capsule_destructor_versioned(capsule: *mut ffi::PyObject) {
    // SAFETY: as above.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, NAME_VERSIONED.as_ptr()) == 1 {
            let managed = ffi::PyCapsule_GetPointer(capsule, NAME_VERSIONED.as_ptr());
            delete_versioned(managed.cast());
        }
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
    let mut shape = export.shape.clone();
    let mut strides = row_major_strides(&shape);
    let dl_tensor = tensor(&export, &mut shape, &mut strides);
    let lease = export.lease;
    if versioned {
        let holder = Box::into_raw(Box::new(Holder {
            managed: DLManagedTensorVersioned {
                version: DLPackVersion {
                    major: VERSION.0,
                    minor: VERSION.1,
                },
                manager_ctx: std::ptr::null_mut(),
                deleter: Some(delete_versioned),
                flags: FLAG_READ_ONLY,
                dl_tensor,
            },
            shape,
            strides,
            _lease: lease,
        }));
        // SAFETY: `holder` is a fresh, valid, uniquely owned allocation; the shape/strides
        // vectors it owns are the ones `dl_tensor` points into and are never resized, so those
        // pointers stay valid for the holder's life. On capsule failure we free it ourselves.
        unsafe {
            (*holder).managed.manager_ctx = holder.cast();
            let pointer = NonNull::new_unchecked(holder.cast::<c_void>());
            make_capsule(py, pointer, NAME_VERSIONED, capsule_destructor_versioned)
                .inspect_err(|_| drop(Box::from_raw(holder)))
        }
    } else {
        let holder = Box::into_raw(Box::new(Holder {
            managed: DLManagedTensor {
                dl_tensor,
                manager_ctx: std::ptr::null_mut(),
                deleter: Some(delete_legacy),
            },
            shape,
            strides,
            _lease: lease,
        }));
        // SAFETY: as for the versioned holder.
        unsafe {
            (*holder).managed.manager_ctx = holder.cast();
            let pointer = NonNull::new_unchecked(holder.cast::<c_void>());
            make_capsule(py, pointer, NAME_LEGACY, capsule_destructor_legacy)
                .inspect_err(|_| drop(Box::from_raw(holder)))
        }
    }
}

/// # Safety
/// `pointer` must be a managed tensor that `destructor` knows how to free.
unsafe fn make_capsule<'py>(
    py: Python<'py>,
    pointer: NonNull<c_void>,
    name: &'static CStr,
    destructor: unsafe extern "C" fn(*mut ffi::PyObject),
) -> PyResult<Bound<'py, PyCapsule>> {
    // SAFETY: forwarded from the caller; the destructor only frees tensors nobody consumed.
    unsafe { PyCapsule::new_with_pointer_and_destructor(py, pointer, name, Some(destructor)) }
}

/// Name of a capsule, for tests that check what consumers see.
pub fn capsule_name(capsule: &Bound<'_, PyCapsule>) -> Option<String> {
    // SAFETY: `capsule` is a live capsule and we hold the GIL; the returned name pointer is
    // owned by the capsule and copied before we return.
    unsafe {
        let name: *const c_char = ffi::PyCapsule_GetName(capsule.as_ptr());
        (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
    }
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
