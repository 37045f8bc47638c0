//! fastbridge's Rust core: a ring of page-aligned, optionally pinned host slots, filled with the
//! GIL released and exported to JAX through DLPack without copies.
//!
//! Layout: [`pool`] (slot ownership and reuse, safe), [`notify`] (wake-ups), [`queue`] (the
//! ready queue), [`ring`] (the slot pool's Python classes), [`error`] (one error mapping).
//! `unsafe` code lives only in [`memory`], [`copy`], [`dlpack`], [`cuda`] and [`ring`], each
//! block with a `SAFETY` note.

pub mod memory;
pub mod notify;
pub mod pool;
mod sync;

#[cfg(not(loom))]
pub mod copy;
#[cfg(not(loom))]
mod cuda;
#[cfg(not(loom))]
mod dlpack;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod queue;
#[cfg(not(loom))]
mod ring;

#[cfg(not(loom))]
use pyo3::prelude::*;

/// The extension module: registration only.
#[cfg(not(loom))]
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<queue::ReadyQueue>()?;
    m.add_class::<ring::SlotPool>()?;
    m.add_class::<ring::Slot>()?;
    m.add_class::<ring::Leaf>()?;
    m.add_function(wrap_pyfunction!(ring::capsule_name, m)?)?;
    m.add_function(wrap_pyfunction!(ring::cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(ring::copy_into, m)?)?;
    m.add("PAGE_SIZE", memory::PAGE)?;
    m.add("LEAF_ALIGN", memory::LEAF_ALIGN)?;
    m.add("MAX_QUEUE_CAPACITY", queue::MAX_CAPACITY)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
