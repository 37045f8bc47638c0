"""The accelerator path, as far as JAX's CPU devices can show it: which route is chosen from
what the running JAX offers, one transfer per device split into leaves on the device, and
slots that come back only after their transfer has completed.

``FASTBRIDGE_TRANSFER=device_put`` makes CPU devices take the accelerator path (one transfer
per device, a jitted split) instead of aliasing the slot, so every check here runs the code a
GPU runs, minus the DMA itself (that is ``benches/gpu/check.py``'s job on a GPU machine).
"""

from __future__ import annotations

import random

import fastbridge
import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import SLOT_BACKENDS
from fastbridge import _transfer
from fastbridge._handoff import SPLIT_AFTER
from fastbridge._native import core
from fastbridge._testing import internals, recorded_slots
from fastbridge._transfer import Capabilities, DmaMaps, Transfers, choose_route
from jax.sharding import Mesh, NamedSharding, PartitionSpec

GPU_ALL = Capabilities("gpu", dma_map=True, cuda_host_import=True, cuda_driver=True)


@pytest.mark.parametrize(
    ("capabilities", "route"),
    [
        (Capabilities("cpu"), "cpu"),
        (GPU_ALL, "pinned_host"),  # dma_map only when forced (below)
        (Capabilities("gpu", cuda_host_import=True, cuda_driver=True), "pinned_host"),
        (Capabilities("gpu", cuda_driver=True), "register"),
        (Capabilities("gpu"), "device_put"),
        (Capabilities("tpu"), "device_put"),
    ],
)
def test_the_best_route_the_running_jax_offers_is_chosen(capabilities, route):
    assert choose_route(capabilities) == route


def test_dma_map_is_used_only_when_forced():
    """The pool frees slots mid-stream without telling Python; a client registration that
    outlived its memory would serve stale pinned pages, so dma_map is never the default."""
    only_dma = Capabilities("gpu", dma_map=True)
    assert choose_route(only_dma) == "device_put"
    assert choose_route(only_dma, forced="dma_map") == "dma_map"


def test_pin_memory_false_rules_out_every_pinning_route():
    assert choose_route(GPU_ALL, pin_memory=False) == "device_put"
    assert choose_route(Capabilities("cpu"), pin_memory=False) == "cpu"  # nothing to pin


def test_a_forced_route_must_exist_and_be_able_to_run_here():
    assert choose_route(GPU_ALL, forced="register") == "register"
    with pytest.raises(ValueError, match=r"FASTBRIDGE_TRANSFER='dma' is not a transfer route"):
        choose_route(GPU_ALL, forced="dma")
    with pytest.raises(ValueError, match=r"cannot run on a cpu device.*cpu, device_put"):
        choose_route(Capabilities("cpu"), forced="dma_map")


def test_the_cpu_probe_finds_the_zero_copy_route_and_no_dma_mapping():
    device = jax.devices("cpu")[0]
    assert _transfer.probe(device) == Capabilities("cpu")
    # The client has the dma_map method on recent JAX, but the CPU client cannot register host
    # memory: the probe must ask, not look for the attribute.
    assert not _transfer._can_dma_map(device)
    assert not _transfer._imports_cuda_host(device) or core.cuda_available()


def test_a_cpu_client_refuses_registration_and_the_transfer_still_runs():
    client = jax.devices("cpu")[0].client
    maps = DmaMaps(client)
    buffer = np.zeros(3 * 4096, np.uint8)
    assert not maps.ensure(buffer.ctypes.data, buffer.nbytes, 1)
    assert (maps.failures, len(maps)) == (1, 0)


class _RecordingClient:
    """Records dma_map/dma_unmap calls: the bookkeeping below is fastbridge's own, and no JAX
    client on this machine registers host memory (the GPU check runs the real one)."""

    def __init__(self) -> None:
        self.mapped: dict[int, int] = {}

    def dma_map(self, address: int, size: int) -> None:
        for other, length in self.mapped.items():
            if other < address + size and address < other + length:
                raise RuntimeError("overlaps a mapped range")
        self.mapped[address] = size

    def dma_unmap(self, address: int) -> None:
        del self.mapped[address]


def test_a_new_slot_at_a_freed_slots_address_is_registered_afresh():
    client = _RecordingClient()
    maps = DmaMaps(client)
    assert maps.ensure(4096, 8192, buffer_id=1)
    assert maps.ensure(4096, 8192, buffer_id=1)  # the same slot again: nothing to do
    # The pool freed slot 1 and allocated slot 2 over part of its range: the old registration
    # pins the old pages and must go, or XLA would DMA from them.
    assert maps.ensure(8192, 16384, buffer_id=2)
    assert client.mapped == {8192: 16384}
    assert maps.ensure(8192, 16384, buffer_id=3)  # same address and size, new allocation
    assert client.mapped == {8192: 16384} and len(maps) == 1
    maps.close()
    assert client.mapped == {}


def _batch(i: int, rows: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {
        "f32": rng.standard_normal((rows, 3, 5)).astype(np.float32),
        "i32": rng.integers(-(2**31), 2**31 - 1, (rows,), dtype=np.int32),
        "u8": rng.integers(0, 256, (rows, 7), dtype=np.uint8),
        "bool": rng.integers(0, 2, (rows, 2)).astype(bool),
        "bf16": rng.standard_normal((rows, 4)).astype(ml_dtypes.bfloat16),
        "c64": (rng.standard_normal((rows, 2)) + 1j * rng.standard_normal((rows, 2))).astype(
            np.complex64
        ),
        "f64": rng.standard_normal((rows, 3)),  # narrowed to float32 (x64 off)
        "empty": np.zeros((rows, 0), np.float32),
        "step": np.int32(i),
    }


def _expected(i: int) -> dict[str, np.ndarray]:
    batch = _batch(i)
    batch["f64"] = batch["f64"].astype(np.float32)
    return batch


def _assert_bitwise(batch, i: int) -> None:
    for key, want in _expected(i).items():
        got = np.asarray(batch[key])
        assert got.dtype == want.dtype and got.shape == want.shape, key
        assert got.tobytes() == np.asarray(want).tobytes(), f"batch {i} leaf {key}"


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_one_transfer_per_batch_split_on_the_device_is_bitwise(backend, monkeypatch):
    monkeypatch.setenv("FASTBRIDGE_TRANSFER", "device_put")
    batches = [_batch(i) for i in range(12)]
    with recorded_slots() as ranges, fastbridge.stream(batches, backend=backend, prefetch=3) as s:
        converter = internals(s).converter
        held = list(s)
        assert s.stats.transfer_route == "device_put"
    for i, batch in enumerate(held):
        _assert_bitwise(batch, i)
        for leaf in jax.tree_util.tree_leaves(batch):
            if leaf.nbytes:  # a transferred leaf is the device's own buffer, not the slot
                pointer = leaf.unsafe_buffer_pointer()
                assert not any(a <= pointer < a + n for a, n in ranges.items())
    # One transfer per batch (not one per leaf) once the layout repeats, each completed before
    # the stream closed; the layout's first batch went leaf by leaf (no compile for a shape
    # that may never come back).
    assert converter.transfers.completed == len(batches) - (SPLIT_AFTER - 1)
    assert len(converter.transfers) == 0


def test_the_cpu_route_still_aliases_the_slot():
    with recorded_slots() as ranges, fastbridge.stream([_batch(0)], backend="ring") as s:
        (batch,) = list(s)
        assert s.stats.transfer_route == "cpu"
    pointer = batch["f32"].unsafe_buffer_pointer()
    assert any(a <= pointer < a + n for a, n in ranges.items())


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_with_a_sharding_there_is_one_transfer_per_device(backend, monkeypatch):
    monkeypatch.setenv("FASTBRIDGE_TRANSFER", "device_put")
    devices = jax.devices("cpu")[:8]
    mesh = Mesh(np.array(devices).reshape(4, 2), ("data", "model"))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    batches = [{"x": _batch(i)["f32"], "y": _batch(i)["u8"]} for i in range(5)]
    with fastbridge.stream(batches, backend=backend, sharding=sharding) as stream:
        converter = internals(stream).converter
        held = list(stream)
    assert converter.transfers.completed == (len(batches) - (SPLIT_AFTER - 1)) * len(devices)
    for want, got in zip(batches, held, strict=True):
        for key in want:
            assert got[key].sharding == sharding
            assert np.asarray(got[key]).tobytes() == want[key].tobytes()
            # Rows 0-1 on the first "data" row of the mesh (both "model" devices), and so on.
            for shard in got[key].addressable_shards:
                assert np.asarray(shard.data).tobytes() == want[key][shard.index].tobytes()


def test_a_replicated_leaf_reaches_every_device_in_that_devices_transfer(monkeypatch):
    monkeypatch.setenv("FASTBRIDGE_TRANSFER", "device_put")
    mesh = Mesh(np.array(jax.devices("cpu")[:4]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec())
    with fastbridge.stream([_batch(3)] * SPLIT_AFTER, backend="ring", sharding=sharding) as s:
        *_, batch = list(s)
        assert internals(s).converter.transfers.completed == 4  # the repeated layout's batch
    _assert_bitwise(batch, 3)
    assert len(batch["f32"].addressable_shards) == 4


def test_a_slot_comes_back_only_after_its_transfer_completed():
    pool = core.SlotPool(slots=4, lock=False)
    transfers = Transfers("device_put", depth=2)
    device = jax.devices("cpu")[0]
    for value in range(3):
        slot = pool.acquire(4096)
        slot.fill([(np.full(4096, value, np.uint8), 0, 0)])
        # On CPU the transferred array may alias the slot; on a GPU it is device memory.
        # Either way this test holds no reference of its own: only the transfer does.
        transfers.send([(slot.export(0, [4096], 1, 8), device)])
        slot.release()  # the producer's reference: the transfer's host reference remains
    assert pool.stats()["slots_free"] == 0  # every slot still held by its transfer
    transfers.reap()  # three in flight, depth two: the oldest is waited for and released
    assert len(transfers) <= 2 and pool.stats()["slots_free"] >= 1
    transfers.drain()
    assert pool.stats()["slots_free"] == 3 and len(transfers) == 0
    pool.close()


@pytest.mark.parametrize(
    ("backend", "route"),
    [
        *((b, "device_put") for b in SLOT_BACKENDS),
        *((b, "cpu") for b in [*SLOT_BACKENDS, "direct"]),
    ],
)
def test_held_and_donated_batches_stay_exact_under_random_holds(backend, route, monkeypatch):
    """The model: every batch arrives once, in order, and every held batch still equals its
    source when the stream has ended, while others are dropped at random or donated. On the
    cpu route leaves alias their slot (or source): a donated leaf's memory may become the
    output of the computation it went to, whose outputs are kept a while, so its slot must
    stay leased until they are gone too."""
    if route != "cpu":
        monkeypatch.setenv("FASTBRIDGE_TRANSFER", route)
    rng = random.Random(7)
    donate = jax.jit(lambda x: x * 2, donate_argnums=0)
    held: dict[int, dict] = {}
    outputs: list[jax.Array] = []
    seen = []
    with fastbridge.stream((_batch(i) for i in range(150)), backend=backend, prefetch=2) as s:
        for batch in s:
            i = int(batch["step"])
            seen.append(i)
            roll = rng.random()
            if roll < 0.3:
                held[i] = batch
            elif roll < 0.45:
                outputs = [*outputs[-5:], donate(batch["f32"])]
                assert batch["f32"].is_deleted()  # the donation really took the buffer
            if held and rng.random() < 0.2:
                del held[rng.choice(list(held))]
    assert seen == list(range(150))
    for i, batch in held.items():
        _assert_bitwise(batch, i)


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_closing_mid_stream_leaves_no_transfer_in_flight(backend, monkeypatch):
    """close() runs on the consumer's thread while the producer issues transfers: once it
    returns, none is in flight and none starts (a registration is dropped only after that)."""
    monkeypatch.setenv("FASTBRIDGE_TRANSFER", "device_put")

    def endless():
        i = 0
        while True:
            yield _batch(i % 4)
            i += 1

    for taken in range(0, 12, 3):
        stream = fastbridge.stream(endless(), backend=backend, prefetch=4)
        converter = internals(stream).converter
        for _ in range(taken):
            next(stream)
        stream.close()
        assert len(converter.transfers) == 0 and converter._closed


def test_a_transferred_buffer_someone_deleted_keeps_its_slot_and_crashes_nothing():
    """``for a in jax.live_arrays(): a.delete()`` reaches the producer's own buffers too;
    asking a deleted one whether it is ready aborts some JAX versions."""
    pool = core.SlotPool(slots=2, lock=False)
    transfers = Transfers("device_put", depth=1)
    slot = pool.acquire(4096)
    (flat,) = transfers.send([(slot.export(0, [4096], 1, 8), jax.devices("cpu")[0])])
    slot.release()
    flat.delete()
    transfers.reap()
    transfers.drain()
    assert len(transfers) == 0
    assert pool.stats()["slots_free"] == 0  # kept: nobody can say the copy has finished
    pool.close()
