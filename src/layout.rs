//! A batch's layout in a slot, checked once: which bytes of which source go where (and how they
//! are converted), and which leaves are exported afterwards. `Slot.write` follows a layout with
//! one call per batch, the GIL released for the copies, so a batch of many leaves costs one
//! crossing into Rust instead of one per leaf.

use crate::copy::Conversion;
use crate::dlpack::DLDataType;
use crate::error::{message, CoreError, Message};
use crate::memory::LEAF_ALIGN;
use pyo3::prelude::*;

/// `len` source bytes from byte `start` of source `source`, converted into the slot at `offset`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fill {
    /// This entry's index in the list the layout was made from (errors name it).
    pub index: usize,
    pub source: usize,
    pub start: usize,
    pub len: usize,
    pub offset: usize,
    pub conversion: Conversion,
}

impl Fill {
    /// Bytes written into the slot.
    pub fn written(&self) -> usize {
        let (src_unit, dst_unit) = self.conversion.unit();
        self.len / src_unit * dst_unit
    }
}

/// One leaf exported from the slot after the fills.
#[derive(Clone, Debug)]
pub(crate) struct LeafExport {
    pub offset: usize,
    pub shape: Vec<i64>,
    pub dtype: DLDataType,
    pub device_id: i32,
}

/// Where a batch's leaves lie in a slot: made once per batch structure, shapes and dtypes by
/// the Python layer, then used for every batch that has them (`Slot.write`).
///
/// `fills` holds `(source, start, len, offset, conversion)`: `len` bytes from byte `start` of
/// source `source` go, converted, to byte `offset` of the slot. `exports` holds
/// `(offset, shape, code, bits, device_id)` entries, each exported as a `Leaf` after the fills.
/// Checked here, once: conversion codes, whole elements, fills that do not overlap, and exports
/// that are aligned, sized and within `nbytes`.
#[pyclass(module = "fastbridge._core", frozen)]
pub struct Layout {
    /// Sorted by slot offset (so the slot splits into disjoint destinations in one pass).
    pub(crate) fills: Vec<Fill>,
    pub(crate) exports: Vec<LeafExport>,
    /// How many sources `Slot.write` must be given.
    pub(crate) sources: usize,
    /// The slot bytes this layout needs.
    pub(crate) nbytes: usize,
}

type FillSpec = (usize, usize, usize, usize, u8);
type ExportSpec = (usize, Vec<i64>, u8, u8, i32);

impl Layout {
    pub(crate) fn build(
        sources: usize,
        fills: &[FillSpec],
        exports: &[ExportSpec],
    ) -> Result<Self, CoreError> {
        let mut checked = Vec::with_capacity(fills.len());
        for (index, &(source, start, len, offset, code)) in fills.iter().enumerate() {
            let within = |message: Message| message.within(format!("fill {index}"));
            let conversion = Conversion::from_code(code)
                .ok_or_else(|| within(message!("unknown_conversion", code = code)))?;
            if source >= sources {
                let error = message!("fill_source", source = source, sources = sources);
                return Err(within(error).into());
            }
            let (src_unit, _) = conversion.unit();
            if len % src_unit != 0 || start.checked_add(len).is_none() {
                let error = message!("fill_units", length = len, start = start, unit = src_unit);
                return Err(within(error).into());
            }
            let fill = Fill {
                index,
                source,
                start,
                len,
                offset,
                conversion,
            };
            if offset.checked_add(fill.written()).is_none() {
                return Err(within(message!("fill_overflows", offset = offset)).into());
            }
            checked.push(fill);
        }
        checked.sort_by_key(|fill| fill.offset);
        for pair in checked.windows(2) {
            if pair[0].offset + pair[0].written() > pair[1].offset {
                let (first, second) = (pair[0].index, pair[1].index);
                return Err(message!("fills_overlap", first = first, second = second).into());
            }
        }
        let mut nbytes = checked
            .iter()
            .map(|fill| fill.offset + fill.written())
            .max()
            .unwrap_or(0);
        let mut leaves = Vec::with_capacity(exports.len());
        for (index, (offset, shape, code, bits, device_id)) in exports.iter().enumerate() {
            let end = export_end(*offset, shape, *bits)
                .map_err(|why| why.within(format!("export {index}")))?;
            nbytes = nbytes.max(end);
            leaves.push(LeafExport {
                offset: *offset,
                shape: shape.clone(),
                dtype: DLDataType {
                    code: *code,
                    bits: *bits,
                    lanes: 1,
                },
                device_id: *device_id,
            });
        }
        Ok(Self {
            fills: checked,
            exports: leaves,
            sources,
            nbytes,
        })
    }
}

/// The end (exclusive) of `shape` elements of `bits` bits at `offset`, or why no leaf can be
/// exported there: negative dimensions, item sizes that are not whole bytes, sizes that
/// overflow, offsets that are not `LEAF_ALIGN`-aligned.
pub(crate) fn export_end(offset: usize, shape: &[i64], bits: u8) -> Result<usize, Message> {
    if shape.iter().any(|&d| d < 0) {
        return Err(message!("negative_dimension", shape = format!("{shape:?}")));
    }
    if bits == 0 || bits % 8 != 0 {
        return Err(message!("bits_not_bytes", bits = bits));
    }
    if offset % LEAF_ALIGN != 0 {
        return Err(message!("unaligned", offset = offset, align = LEAF_ALIGN));
    }
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
        .and_then(|n| n.checked_mul(usize::from(bits / 8)))
        .and_then(|n| n.checked_add(offset))
        .ok_or_else(|| {
            let shape = format!("{shape:?}");
            message!(
                "export_overflows",
                shape = shape,
                bits = bits,
                offset = offset
            )
        })
}

#[pymethods]
impl Layout {
    #[new]
    #[pyo3(signature = (sources, fills, exports))]
    fn new(sources: usize, fills: Vec<FillSpec>, exports: Vec<ExportSpec>) -> PyResult<Self> {
        Ok(Self::build(sources, &fills, &exports)?)
    }

    /// The slot bytes a batch with this layout needs.
    #[getter]
    fn nbytes(&self) -> usize {
        self.nbytes
    }

    /// How many sources `Slot.write` takes.
    #[getter]
    fn sources(&self) -> usize {
        self.sources
    }

    /// How many leaves `Slot.write` exports.
    #[getter]
    fn exports(&self) -> usize {
        self.exports.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_are_sorted_and_overlaps_refused() {
        let layout = Layout::build(2, &[(1, 0, 64, 64, 0), (0, 0, 64, 0, 0)], &[]).unwrap();
        assert_eq!(layout.fills[0].source, 0);
        assert_eq!(layout.nbytes, 128);
        assert!(Layout::build(1, &[(0, 0, 64, 0, 0), (0, 0, 64, 32, 0)], &[]).is_err());
    }

    #[test]
    fn narrowing_writes_half_and_needs_whole_elements() {
        let layout = Layout::build(1, &[(0, 0, 64, 0, 2)], &[]).unwrap();
        assert_eq!(layout.nbytes, 32);
        assert!(Layout::build(1, &[(0, 0, 60, 0, 2)], &[]).is_err());
        assert!(Layout::build(1, &[(0, 0, 8, 0, 9)], &[]).is_err());
        assert!(Layout::build(1, &[(1, 0, 8, 0, 0)], &[]).is_err());
    }

    #[test]
    fn exports_are_aligned_and_counted_in_the_size() {
        let layout = Layout::build(0, &[], &[(128, vec![4, 4], 2, 32, 0)]).unwrap();
        assert_eq!(layout.nbytes, 192);
        assert!(Layout::build(0, &[], &[(8, vec![1], 2, 32, 0)]).is_err());
        assert!(Layout::build(0, &[], &[(0, vec![-1], 2, 32, 0)]).is_err());
        assert!(Layout::build(0, &[], &[(0, vec![i64::MAX, 4], 2, 32, 0)]).is_err());
        assert!(Layout::build(0, &[], &[(0, vec![1], 2, 12, 0)]).is_err());
    }
}
