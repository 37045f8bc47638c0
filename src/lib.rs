//! fastbridge's Rust core: a ring of page-aligned, optionally pinned host slots, filled with the
//! GIL released and exported to JAX through DLPack without copies.
//!
//! Layout: [`pool`] (slot ownership and reuse, safe), [`notify`] (wake-ups), [`queue`] (the
//! ready queue), [`ring`] (the slot pool's Python classes), [`layout`] (a batch's layout in a slot, checked once), [`convert`] (`copy_into`, the
//! kernels' entry for other buffers), [`gil`] (releasing the GIL), [`error`] (one error
//! mapping). `unsafe` code lives only in [`memory`], [`copy`], [`dlpack`] and [`cuda`], each
//! block with a `SAFETY` note (clippy's `undocumented_unsafe_blocks` denies any without).

pub mod memory;
pub mod notify;
pub mod pool;
mod sync;

#[cfg(not(loom))]
mod convert;
#[cfg(not(loom))]
pub mod copy;
#[cfg(not(loom))]
mod cuda;
#[cfg(not(loom))]
mod dlpack;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod gil;
#[cfg(not(loom))]
mod layout;
#[cfg(not(loom))]
mod queue;
#[cfg(not(loom))]
mod ring;

#[cfg(not(loom))]
use pyo3::prelude::*;
#[cfg(not(loom))]
use pyo3::types::IntoPyDict;

/// The extension module: registration only.
#[cfg(not(loom))]
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<queue::ReadyQueue>()?;
    m.add_class::<ring::SlotPool>()?;
    m.add_class::<ring::Slot>()?;
    m.add_class::<ring::Leaf>()?;
    m.add_class::<layout::Layout>()?;
    m.add_function(wrap_pyfunction!(ring::cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(convert::copy_into, m)?)?;
    m.add("PAGE_SIZE", memory::PAGE)?;
    m.add("LEAF_ALIGN", memory::LEAF_ALIGN)?;
    // The facts the Python layer would otherwise repeat: conversion codes by name, the
    // narrowings they perform, and DLPack (type code, bits) by NumPy dtype name.
    let py = m.py();
    let conversions = copy::Conversion::ALL.map(|c| (c.name(), c.code()));
    m.add("CONVERSIONS", conversions.into_py_dict(py)?)?;
    let narrowings = copy::Conversion::ALL.into_iter().filter_map(|c| {
        c.dtypes()
            .map(|(source, target)| (source, (target, c.code())))
    });
    m.add("NARROWINGS", narrowings.into_py_dict(py)?)?;
    let type_codes = dlpack::TYPE_CODES.map(|(name, code, bits)| (name, (code, bits)));
    m.add("DLPACK_TYPE_CODES", type_codes.into_py_dict(py)?)?;
    m.add("MAX_QUEUE_CAPACITY", queue::MAX_CAPACITY)?;
    // The rules the NumPy twin follows as the core does: leaves this large are copied on
    // several threads, a wait this long (seconds) is a wait without end, and a blocked wait
    // checks for Ctrl-C this often (seconds).
    m.add("PARALLEL_THRESHOLD", copy::PARALLEL_THRESHOLD)?;
    m.add("FOREVER", queue::FOREVER.as_secs_f64())?;
    m.add("SIGNAL_POLL", gil::SIGNAL_POLL.as_secs_f64())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
