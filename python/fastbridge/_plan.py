"""A batch's plan: where its leaves lie in a slot and how each becomes a ``jax.Array``.

Working a batch out leaf by leaf costs far more in Python than moving its bytes. Every batch of
a stream but the last usually has the same structure, dtypes and shapes, so a :class:`Planner`
works each combination out once (leaf checks, the dtype policy, sharding blocks, slot offsets,
the core's ``Layout``, a ``putter`` per leaf) and keeps it, and a batch that matches costs a
flatten, a dictionary lookup and the work itself (``_handoff``). The first batch of a structure
goes through the :class:`~fastbridge._leaves.Flattener`, whose checks and messages are the
stream's; a batch that matches no plan goes through it again, so a bad batch fails exactly as
it always did.

How an array leaf reaches JAX (``Structure.routes``):

``SLOT``
    copied (narrowed where the dtype policy says) into the batch's slot, then made into a
    ``jax.Array`` from the slot's memory: aliased on CPU, transferred on an accelerator;
``DIRECT``
    made into a ``jax.Array`` from the source's own buffer (aliased where JAX can);
``NARROW``
    narrowed by NumPy into new memory, then as ``DIRECT`` (``direct`` without the core).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ._leaves import (
    CAST,
    DL_BFLOAT,
    DL_UINT,
    Flattener,
    LeafSpec,
    checked_cast,
    host_view,
    is_opaque,
    is_string_array,
)
from ._native import LEAF_ALIGN
from ._placement import Placement
from ._put import Putter, putter
from ._transfer import SplitLayout

SLOT, DIRECT, NARROW = "slot", "direct", "narrow"

PLANS = 256
"""Plans a stream keeps (least recently used dropped first): one per batch shape it has seen,
so a stream whose shapes vary (dynamic padding) stays bounded."""
_STRUCTURES = 64


def _align(offset: int) -> int:
    return -(-offset // LEAF_ALIGN) * LEAF_ALIGN


@dataclasses.dataclass(frozen=True)
class Structure:
    """What the checks of a batch's structure and dtypes decided, for every batch with them."""

    specs: tuple[LeafSpec, ...]
    routes: tuple[str | None, ...]
    """Per leaf: ``None`` for a leaf passed through (strings), else ``SLOT``, ``DIRECT`` or
    ``NARROW``."""
    casts: tuple[int, ...]
    """Leaves that ``dtypes=`` casts on the producer (NumPy), before anything else."""
    strings: tuple[int, ...]
    """Object-dtype leaves passed through: checked to hold only strings, batch by batch."""


@dataclasses.dataclass
class Region:
    """One device's bytes of a slot on the transfer route: moved in one transfer, then split."""

    device: jax.Device
    start: int
    stop: int
    layout: SplitLayout
    leaves: list[tuple[int, int]]
    """``(leaf, block)`` of each part of ``layout``, in order."""


@dataclasses.dataclass
class Plan:
    """Everything about one batch structure, dtypes and shapes that does not change with the
    batch's values."""

    structure: Structure
    sources: tuple[int, ...]
    """The leaves copied into the slot, in the order ``layout`` takes them."""
    fills: tuple[int, ...]
    """The leaf of each of ``layout``'s fills (a narrowing that overflows names its fill)."""
    byte_sources: frozenset[int]
    """Of ``sources``, the leaves handed to the core as bytes (dtypes without a buffer format)."""
    scalar_sources: frozenset[int]
    """Of ``sources``, 0-d leaves (handed to the core with one dimension: a buffer needs one)."""
    layout: Any
    """The core's ``Layout`` (or the NumPy twin's): the fills, and one export per block."""
    bfloat: tuple[int, ...]
    """Exports to view as bfloat16 (exported as uint16: NumPy has no DLPack code for it)."""
    slot_puts: list[tuple[int, Putter, tuple[int, ...]]]
    """``(leaf, putter, exports)``: the leaf's array from these exports, one per device."""
    direct_puts: list[tuple[int, Putter, tuple[slice, ...] | None]]
    """``(leaf, putter, rows)``: the leaf's array from its own buffer (``rows`` per device)."""
    placed: list[tuple[int, int | None]]
    """``(leaf, export)``: leaves a sharding splits beyond the batch axis, placed by copy from
    an export (or from the leaf itself when ``None``)."""
    out_bytes: int
    """Bytes in the batch's arrays."""
    regions: list[Region] = dataclasses.field(default_factory=list)
    """The transfer route's per-device regions (empty on the ``cpu`` route)."""
    fill_entries: list[tuple[int, int, int, int, int]] = dataclasses.field(default_factory=list)
    """``layout``'s fills, as the core takes them."""
    region_layout: Any = None
    """The same fills as ``layout``, exporting one ``uint8`` range per region (made by
    :meth:`Planner.region_layout` when the plan first moves whole)."""
    blocks: dict[int, list[tuple[int, int, list[jax.Device]]]] = dataclasses.field(
        default_factory=dict
    )
    """Each slot leaf's row blocks and the devices holding each, with a sharding (empty
    without one: every leaf is then one block, on the stream's device)."""
    uses: int = 0
    splits: list[Callable[[jax.Array], list[jax.Array]]] | None = None
    """One jitted split per region, once the transfer route compiled them for this plan."""

    @property
    def nbytes(self) -> int:
        """Slot bytes a batch with this plan needs (0: it takes no slot)."""
        return int(self.layout.nbytes) if self.layout is not None else 0


class Planner:
    """A stream's plans, by batch structure, dtypes and shapes.

    ``route(spec)`` says how each array leaf reaches JAX; ``make_layout`` is the core's
    ``Layout`` (or the NumPy twin's), ``None`` when the stream has no slots; ``transfer``
    lays slots out device by device (the accelerator route), and ``copy`` makes puts copy
    instead of aliasing host memory on CPU.
    """

    def __init__(
        self,
        flatten: Flattener,
        placement: Placement,
        *,
        route: Callable[[LeafSpec], str],
        make_layout: Any,
        transfer: bool = False,
        copy: bool = False,
    ) -> None:
        self.flatten = flatten
        self.placement = placement
        self.route = route
        self.make_layout = make_layout
        self.transfer = transfer
        self.copy = copy
        self._plans: collections.OrderedDict[Any, Plan] = collections.OrderedDict()
        self._structures: dict[Any, Structure] = {}
        self._putters: dict[Any, Putter] = {}

    def __len__(self) -> int:
        return len(self._plans)

    def prepare(self, item: Any, index: int) -> tuple[Plan, Any, list[Any]]:
        """The plan for batch ``item`` (number ``index``), its structure and its leaves, ready
        for the plan (tensors as NumPy views of their buffers, ``dtypes=`` casts done)."""
        leaves, treedef = jax.tree_util.tree_flatten(item)
        leaves = [x if type(x) is np.ndarray else _hosted(x) for x in leaves]
        try:
            dtypes = tuple([x.dtype for x in leaves])
            shapes = tuple([x.shape for x in leaves])
        except AttributeError:  # a leaf that is not an array: the checks say what it is
            return self._checked(item, index)
        plan = self._plans.get((treedef, dtypes, shapes))
        structure = plan.structure if plan is not None else self._structures.get((treedef, dtypes))
        if structure is None or not _ready(leaves, structure):
            return self._checked(item, index)
        for i in structure.casts:
            leaves[i] = checked_cast(leaves[i], structure.specs[i])
        if plan is None:
            plan = self._remember((treedef, dtypes, shapes), self._build(structure, leaves))
        else:
            self._plans.move_to_end((treedef, dtypes, shapes))
        return plan, treedef, leaves

    def _checked(self, item: Any, index: int) -> tuple[Plan, Any, list[Any]]:
        """The first batch of a structure, or one that matches nothing known: every check of
        the ``Flattener`` (which raises, naming the leaf, for a batch that is wrong)."""
        # Tensors as views of their buffers, as the fast path sees them (``.numpy()`` copies).
        item = jax.tree_util.tree_map(_hosted, item, is_leaf=is_opaque)
        flat = self.flatten(item, index)
        specs = tuple(flat.specs)
        routes = tuple(None if spec.passthrough else self.route(spec) for spec in specs)
        structure = Structure(
            specs,
            routes,
            casts=tuple(i for i, spec in enumerate(specs) if spec.conversion == CAST),
            strings=tuple(
                i
                for i, spec in enumerate(specs)
                if spec.passthrough and flat.leaves[i].dtype == object
            ),
        )
        plan = self._build(structure, flat.leaves)
        treedef = jax.tree_util.tree_structure(item)
        dtypes = tuple(
            spec.source_dtype if not spec.passthrough else leaf.dtype
            for spec, leaf in zip(specs, flat.leaves, strict=True)
        )
        if len(self._structures) >= _STRUCTURES:
            self._structures.clear()
        self._structures[treedef, dtypes] = structure
        shapes = tuple(leaf.shape for leaf in flat.leaves)
        return self._remember((treedef, dtypes, shapes), plan), treedef, flat.leaves

    def _remember(self, key: Any, plan: Plan) -> Plan:
        self._plans[key] = plan
        if len(self._plans) > PLANS:
            self._plans.popitem(last=False)
        return plan

    def _build(self, structure: Structure, leaves: list[Any]) -> Plan:
        if self.placement.sharding is None:
            return self._build_local(structure, leaves)
        specs, placement = structure.specs, self.placement
        slot_puts: list[tuple[int, Putter, tuple[int, ...]]] = []
        direct_puts: list[tuple[int, Putter, tuple[slice, ...] | None]] = []
        placed: list[tuple[int, int | None]] = []
        blocks: dict[int, list[tuple[int, int, list[jax.Device]]]] = {}
        out_bytes = 0
        for i, route in enumerate(structure.routes):
            if route is None:
                continue
            spec, shape = specs[i], tuple(leaves[i].shape)
            placement.check(spec.path, shape)
            out_bytes += math.prod(shape) * spec.target_dtype.itemsize
            found = placement.row_blocks(shape)
            if route == SLOT:
                blocks[i] = found or [(0, shape[0] if shape else 0, [placement.device])]
                if not found:
                    placed.append((i, None))  # the export is known once the layout is
                continue
            if not found:
                placed.append((i, None))
                continue
            devices = [device for _, _, holders in found for device in holders]
            rows = None
            if placement.sharding is not None:
                rows = tuple(slice(a, b) for a, b, holders in found for _ in holders)
            direct_puts.append((i, self._putter(spec, shape, devices), rows))
        plan = Plan(
            structure,
            sources=tuple(blocks),
            fills=(),
            byte_sources=frozenset(i for i in blocks if specs[i].dlpack[0] == DL_BFLOAT),
            scalar_sources=frozenset(i for i in blocks if not leaves[i].ndim),
            layout=None,
            bfloat=(),
            slot_puts=slot_puts,
            direct_puts=direct_puts,
            placed=placed,
            out_bytes=out_bytes,
            blocks=blocks,
        )
        if blocks:
            self._lay_out(plan, leaves)
        return plan

    def _build_local(self, structure: Structure, leaves: list[Any]) -> Plan:
        """``_build`` without a sharding: every leaf whole, on one device, back to back in the
        slot (which is then also the transfer route's one region). The loop a stream whose
        shapes vary runs for every batch, so it does each leaf's work in one pass."""
        specs, device = structure.specs, self.placement.device
        sources: list[int] = []
        fills: list[tuple[int, int, int, int, int]] = []
        exports: list[tuple[int, list[int], int, int, int]] = []
        parts: list[tuple[int, tuple[int, ...], np.dtype]] = []
        slot_puts: list[tuple[int, Putter, tuple[int, ...]]] = []
        direct_puts: list[tuple[int, Putter, tuple[slice, ...] | None]] = []
        bfloat: list[int] = []
        end = out_bytes = 0
        for i, route in enumerate(structure.routes):
            if route is None:
                continue
            leaf, spec = leaves[i], specs[i]
            target = spec.target_dtype
            nbytes = leaf.size * target.itemsize
            out_bytes += nbytes
            put = self._putter(spec, leaf.shape, [device])
            if route != SLOT:
                direct_puts.append((i, put, None))
                continue
            offset = _align(end)
            end = offset + nbytes
            code, bits = spec.dlpack
            if code == DL_BFLOAT:
                code = DL_UINT
                bfloat.append(len(exports))
            slot_puts.append((i, put, (len(exports),)))
            fills.append((len(sources), 0, leaf.nbytes, offset, spec.fill_code))
            exports.append((offset, list(leaf.shape), code, bits, 0))
            parts.append((offset, leaf.shape, target))
            sources.append(i)
        plan = Plan(
            structure,
            sources=tuple(sources),
            fills=tuple(sources),
            byte_sources=frozenset(i for i in sources if specs[i].dlpack[0] == DL_BFLOAT),
            scalar_sources=frozenset(i for i in sources if not leaves[i].ndim),
            layout=self.make_layout(len(sources), fills, exports) if sources else None,
            bfloat=tuple(bfloat),
            slot_puts=slot_puts,
            direct_puts=direct_puts,
            placed=[],
            out_bytes=out_bytes,
            fill_entries=fills,
        )
        if self.transfer and sources:
            leaves_of = [(i, 0) for i in sources]
            plan.regions.append(Region(device, 0, end, tuple(parts), leaves_of))
        return plan

    def _putter(self, spec: LeafSpec, shape: tuple[int, ...], devices: list[jax.Device]) -> Putter:
        # A stream whose shapes vary (dynamic padding) pads most leaves to the same few
        # shapes: its plans share putters, found here faster than a general cache would.
        key = (shape, spec.target_dtype, *devices)
        found = self._putters.get(key)
        if found is None:
            if len(self._putters) >= PLANS:
                self._putters.clear()
            found = self._putters[key] = putter(
                self.placement.global_shape(shape),
                spec.target_dtype,
                self.placement.target,
                devices,
                x64=self.flatten.x64,
                copy=self.copy,
            )
        return found

    def _lay_out(self, plan: Plan, leaves: list[Any]) -> None:
        """The slot's layout: one block per leaf and row block (device by device on the
        transfer route, each device's blocks back to back), its fills and its exports."""
        specs = plan.structure.specs
        # Per slot leaf: its source number, and bytes per row in the source and in the slot.
        rows: dict[int, tuple[int, int, int]] = {}
        for n, i in enumerate(plan.sources):
            leaf = leaves[i]
            cells = math.prod(leaf.shape[1:]) if leaf.ndim else 1
            rows[i] = (n, cells * leaf.itemsize, cells * specs[i].target_dtype.itemsize)
        # Entries (leaf, block, offset) in slot order.
        entries: list[tuple[int, int, int]] = []
        end = 0
        if self.transfer:
            targets = dict.fromkeys(
                d for found in plan.blocks.values() for _, _, holders in found for d in holders
            )
            for device in targets:
                start = end = _align(end)
                parts: list[tuple[int, tuple[int, ...], np.dtype]] = []
                owners: list[tuple[int, int]] = []
                for i, found in plan.blocks.items():
                    for b, (first, last, holders) in enumerate(found):
                        if device in holders:
                            offset = _align(end)
                            entries.append((i, b, offset))
                            shape = _block_shape(leaves[i], found[b])
                            parts.append((offset - start, shape, specs[i].target_dtype))
                            owners.append((i, b))
                            end = offset + (last - first if shape else 1) * rows[i][2]
                plan.regions.append(Region(device, start, end, tuple(parts), owners))
        else:
            for i, found in plan.blocks.items():
                for b, (first, last, _) in enumerate(found):
                    offset = _align(end)
                    entries.append((i, b, offset))
                    end = offset + (last - first if leaves[i].ndim else 1) * rows[i][2]
        fills = []
        exports: list[tuple[int, list[int], int, int, int]] = []
        export_of: dict[tuple[int, int], int] = {}
        bfloat = []
        for i, b, offset in entries:
            leaf, spec = leaves[i], specs[i]
            first, last, _ = plan.blocks[i][b]
            n, row, _ = rows[i]
            if leaf.ndim:
                fills.append((n, first * row, (last - first) * row, offset, spec.fill_code))
            else:
                fills.append((n, 0, row, offset, spec.fill_code))
            if (i, b) in export_of:
                continue  # a block replicated on several devices is exported once
            code, bits = spec.dlpack
            if code == DL_BFLOAT:
                code = DL_UINT
                bfloat.append(len(exports))
            export_of[i, b] = len(exports)
            block = [last - first, *leaf.shape[1:]] if leaf.ndim else []
            exports.append((offset, block, code, bits, 0))
        plan.layout = self.make_layout(len(plan.sources), fills, exports)
        plan.fills = tuple(i for i, _, _ in entries)
        plan.fill_entries = fills
        plan.bfloat = tuple(bfloat)
        placed = {i for i, _ in plan.placed}
        for i, found in plan.blocks.items():
            if i in placed:
                continue
            devices = [device for _, _, holders in found for device in holders]
            views = tuple(
                export_of[i, b] for b, (_, _, holders) in enumerate(found) for _ in holders
            )
            put = self._putter(specs[i], tuple(leaves[i].shape), devices)
            plan.slot_puts.append((i, put, views))
        plan.placed = [
            (i, export_of.get((i, 0)) if i in plan.blocks else None) for i, _ in plan.placed
        ]

    def region_layout(self, plan: Plan) -> Any:
        """The layout that exports one ``uint8`` range per region of ``plan`` (made when the
        plan first moves whole: most plans of a stream whose shapes vary never do)."""
        if plan.region_layout is None:
            exports = [
                (r.start, [r.stop - r.start], DL_UINT, 8, r.device.local_hardware_id or 0)
                for r in plan.regions
            ]
            plan.region_layout = self.make_layout(len(plan.sources), plan.fill_entries, exports)
        return plan.region_layout


def _block_shape(leaf: np.ndarray, block: tuple[int, int, Any]) -> tuple[int, ...]:
    start, stop, _ = block
    return (stop - start, *leaf.shape[1:]) if leaf.ndim else ()


def _hosted(leaf: Any) -> Any:
    """A leaf as a NumPy array where that costs no copy (a NumPy scalar, a tensor's buffer);
    anything else as it is, for the checks to judge."""
    if isinstance(leaf, np.generic):
        return np.asarray(leaf)
    if hasattr(leaf, "_numpy") and type(leaf).__name__ == "EagerTensor":
        return host_view(leaf)
    return leaf


def _ready(leaves: list[Any], structure: Structure) -> bool:
    """Whether a batch that matches a known structure needs no more checks: C-contiguous
    leaves (the slot copies and the imports need them), and strings where strings were."""
    if not all([x.flags.c_contiguous for x in leaves]):
        return False
    return all(is_string_array(leaves[i]) for i in structure.strings)
