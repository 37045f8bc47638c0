"""What fastbridge needs to know about a ``tf.data`` pipeline, in one place.

TensorFlow is optional: nothing here imports it unless the caller already has (a source can
only be a ``tf.data.Dataset`` once TensorFlow is imported), except ``keep_tensorflow_off()``,
which a user calls before building a pipeline and which imports TensorFlow when it is installed.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import importlib.util
import re
import sys
from typing import Any

from .errors import warn


def tf_module() -> Any:
    """The imported ``tensorflow`` module, or ``None`` when nobody imported it."""
    return sys.modules.get("tensorflow")


def is_dataset(source: Any) -> bool:
    tf = tf_module()
    return tf is not None and isinstance(source, tf.data.Dataset)


# -- TensorFlow and the GPU --------------------------------------------------------------------

_GPU_PLATFORMS = frozenset({"gpu", "cuda", "rocm"})
"""JAX platforms that are GPUs: ``jax.Device.platform`` says ``"gpu"`` for CUDA and ROCm
devices; the backend names are accepted too."""


def hides_tensorflow_gpus(platform: str) -> bool:
    """Whether a stream whose target device is on JAX ``platform`` keeps TensorFlow off the GPU
    (``stream()`` calls ``keep_tensorflow_off()`` for its tf.data sources then). On a CPU (or
    TPU) target TensorFlow's device configuration is left alone."""
    return platform.lower() in _GPU_PLATFORMS


def keep_tensorflow_off() -> bool:
    """Hide every GPU from TensorFlow, so that tf.data runs on the CPU and JAX keeps the GPU's
    memory.

    TensorFlow maps nearly all of a GPU's memory the first time it initialises its devices,
    which any tensor does (building a ``tf.data.Dataset`` is enough); JAX then runs out of
    memory. Call this once, before building the pipeline: it runs
    ``tf.config.set_visible_devices([], "GPU")``. Calling it again is harmless.

    ``stream()`` calls it for a ``tf.data`` source whose target device is a GPU, but by then
    building the dataset has usually initialised TensorFlow already: if TensorFlow holds GPU
    devices, nothing can hide them any more, and a ``FastbridgeWarning`` says so and how to fix
    it.

    Returns:
      ``True`` when TensorFlow sees no GPU afterwards; ``False`` when TensorFlow is not
      installed (nothing is imported then), or when it had already initialised GPU devices
      (after the warning).

    Example:
      >>> import fastbridge
      >>> fastbridge.keep_tensorflow_off()  # before any TensorFlow tensor or dataset
      True
      >>> import tensorflow as tf
      >>> tf.config.get_visible_devices("GPU")
      []
    """
    # Not installed (or blocked with ``sys.modules["tensorflow"] = None``): import nothing.
    if tf_module() is None and importlib.util.find_spec("tensorflow") is None:
        return False
    import tensorflow as tf

    return _hide_from_tensorflow(tf, "GPU")


def _hide_from_tensorflow(tf: Any, device_type: str) -> bool:
    """Hide every ``device_type`` device from TensorFlow; ``False``, with a warning, when
    TensorFlow already initialised devices of that type. (``device_type`` is a parameter so
    that the tests can make the already-initialised case real with CPU devices.)"""
    try:
        tf.config.set_visible_devices([], device_type)
    except RuntimeError:
        # Visible devices cannot change once TensorFlow has initialised them (TensorFlow
        # raises only when the list would change, so a repeat call never lands here).
        held = tf.config.list_logical_devices(device_type)
        if not held:
            return True
        warn(
            f"TensorFlow already initialised its {device_type} devices "
            f"({', '.join(d.name for d in held)}) and holds their memory (by default it maps "
            "nearly all of it), which JAX may need: they cannot be hidden any more. Call "
            "fastbridge.keep_tensorflow_off() (or tf.config.set_visible_devices([], "
            f"{device_type!r})) before creating the dataset or any TensorFlow tensor, or set "
            'CUDA_VISIBLE_DEVICES="" for processes that only run TensorFlow (tf.data service '
            "workers, preprocessing jobs)"
        )
        return False
    return not tf.config.get_visible_devices(device_type)


def cardinality(ds: Any) -> int | None:
    """The number of elements, or ``None`` when tf.data does not know it (or it is infinite)."""
    n = int(ds.cardinality())
    return n if n >= 0 else None


def is_infinite(ds: Any) -> bool:
    """Whether tf.data knows that ``ds`` never ends (``ds.repeat()`` without a count)."""
    return bool(int(ds.cardinality()) == tf_module().data.INFINITE_CARDINALITY)


_SKIP_MAX = 2**31 - 1
MAX_REPLAY = 2**40
"""The most batches a replayed resume skips: tf.data reads every skipped element (about
20 µs each), so a larger count cannot be a real position."""


def skip(ds: Any, count: int) -> Any:
    """``ds.skip(count)`` for counts up to ``MAX_REPLAY``: tf.data truncates a count to
    32 bits while it iterates (2**31 skips nothing, 2**32 + 3 skips 3), so counts are split."""
    if count > MAX_REPLAY:
        raise ValueError(
            f"state['batches'] = {count} cannot be replayed: resuming would read every batch "
            f"before it, and a count above {MAX_REPLAY} is not a real position"
        )
    while count > _SKIP_MAX:
        ds, count = ds.skip(_SKIP_MAX), count - _SKIP_MAX
    return ds.skip(count) if count else ds


def _resource(iterator: Any) -> Any:
    # as_numpy_iterator() wraps the dataset iterator that owns the state.
    return getattr(iterator, "_iterator", iterator)._iterator_resource


def save_iterator(iterator: Any) -> str:
    """The iterator's state as base64 text (what ``tf.train.Checkpoint`` would store)."""
    import tensorflow as tf
    from tensorflow.python.ops import gen_dataset_ops

    try:
        variant = gen_dataset_ops.serialize_iterator(_resource(iterator))
    except tf.errors.OpError as error:
        raise ValueError(
            "checkpoint=True could not save this tf.data pipeline's iterator state (it has "
            f"state tf.data cannot save, such as a py_function): {error.message}; stream it "
            "with checkpoint=False to resume by replaying instead"
        ) from None
    return base64.b64encode(tf.io.serialize_tensor(variant).numpy()).decode("ascii")


def load_iterator(iterator: Any, saved: str) -> None:
    """Restore ``save_iterator``'s text into a fresh iterator of the same dataset. A state that
    is not one, or that another pipeline saved, raises ``ValueError`` naming the field."""
    import tensorflow as tf
    from tensorflow.python.ops import gen_dataset_ops

    try:
        raw = base64.b64decode(saved.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("state['tf_iterator'] is not base64 text") from None
    try:
        variant = tf.io.parse_tensor(raw, out_type=tf.variant)
    except (tf.errors.OpError, ValueError) as error:
        raise ValueError(
            f"state['tf_iterator'] is not a saved tf.data iterator state ({_reason(error)})"
        ) from None
    try:
        gen_dataset_ops.deserialize_iterator(_resource(iterator), variant)
    except (tf.errors.OpError, ValueError) as error:
        raise ValueError(
            "state['tf_iterator'] does not fit this dataset: it was saved from another "
            f"pipeline ({_reason(error)})"
        ) from None


def _reason(error: Exception) -> str:
    """TensorFlow's message without its op-location prefix, on one line."""
    message = str(getattr(error, "message", error))
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", message).strip()
    line = message.splitlines()[0] if message else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."


# -- what a pipeline does, read from its Python objects ----------------------------------------
# Op names as TensorFlow 2.21 writes them. The Python dataset objects are walked rather than
# ``ds._as_serialized_graph()``, which serializes every embedded constant (half a second for a
# ``from_tensor_slices`` of 128 MiB); function bodies are read as GraphDefs.

_PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
FROM_NUMPY_OP = "fastbridge_from_numpy"
"""Name of ``from_numpy``'s gather op: it returns fresh arrays (a fancy-indexed gather), so,
unlike what other Python functions return, its output may be aliased."""
_GENERATOR_OPS = frozenset({"GeneratorDataset"})
# Random ops whose state a saved iterator does not hold (tf.data drops it with a log warning).
_STATEFUL_RANDOM_OPS = frozenset(
    {
        "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal",
        "Multinomial", "RandomShuffle", "RandomGamma", "RandomPoisson", "RandomPoissonV2",
        "ParameterizedTruncatedNormal", "RngReadAndSkip", "RngSkip", "StatefulUniform",
        "StatefulUniformInt", "StatefulUniformFullInt", "StatefulStandardNormal",
        "StatefulStandardNormalV2", "StatefulTruncatedNormal", "StatefulRandomBinomial",
    }
)  # fmt: skip
_SEEDED_CLASSES = frozenset({"_ShuffleDataset", "_ShuffleAndRepeatDataset", "_RandomDataset"})
_REPEAT_CLASSES = frozenset({"_RepeatDataset", "RepeatDataset"})
# batch(num_parallel_calls=...) (_ParallelBatchDataset) restores exactly; these two do not.
_BATCH_CLASSES = frozenset({"_BatchDataset", "_PaddedBatchDataset"})


@dataclasses.dataclass(frozen=True)
class PipelineFacts:
    """What a ``tf.data`` pipeline does that changes how fastbridge may handle it."""

    python_ops: tuple[str, ...]
    """Python-function ops (``from_generator``, ``py_function``, ``numpy_function``)."""
    generator: bool
    """A ``from_generator`` dataset: tf.data cannot save its iterator state at all."""
    reshuffles_unseeded: bool
    """An unseeded shuffle (or random dataset) that runs again with new seeds after a restore:
    under a ``repeat`` or inside an ``interleave``/``flat_map`` body."""
    stateful_random: tuple[str, ...]
    """Stateful random ops (``tf.random.uniform``...) whose state a saved iterator drops."""
    reshuffles_batched: bool = False
    """A reshuffling ``shuffle`` whose batches (``drop_remainder=False``) a ``repeat`` runs
    again: tf.data (2.21) restores such an iterator saved at an epoch's end with the next
    epoch in another order (``shuffle -> batch -> repeat``; ``shuffle -> repeat -> batch`` is
    exact)."""

    @property
    def runs_python(self) -> bool:
        return bool(self.python_ops) or self.generator


def pipeline_facts(ds: Any) -> PipelineFacts:
    python: set[str] = set()
    stateful: set[str] = set()
    found = {"generator": False, "reshuffles": False, "batched": False}
    seen: set[int] = set()

    def scan_functions(dataset: Any) -> None:
        for function in dataset._functions():
            try:
                graph = function.function.graph.as_graph_def()
            except Exception:  # cannot look inside: assume the worst about Python code
                python.add("<unreadable function>")
                continue
            bodies = [graph.node, *(f.node_def for f in graph.library.function)]
            for nodes in bodies:
                for node in nodes:
                    if node.op in _PYTHON_OPS and not node.name.startswith(FROM_NUMPY_OP):
                        python.add(node.op)
                    elif node.op in _GENERATOR_OPS:
                        found["generator"] = True
                    elif node.op in _STATEFUL_RANDOM_OPS:
                        stateful.add(node.op)
                    elif node.op.startswith(("ShuffleDataset", "RandomDataset")):
                        # A dataset built inside a function body (interleave, flat_map) is
                        # made again for every input element, with fresh seeds if unseeded.
                        found["reshuffles"] = found["reshuffles"] or _unseeded_node(node, nodes)

    def visit(dataset: Any, under_repeat: bool, batched_in_repeat: bool) -> None:
        # Walks from the output to the sources: ``under_repeat`` when a repeat() runs this
        # dataset again; ``batched_in_repeat`` when a batch that keeps its remainder sits
        # between this dataset and such a repeat.
        if id(dataset) in seen:
            return
        seen.add(id(dataset))
        kind = type(dataset).__name__
        if kind in _SEEDED_CLASSES and _unseeded(dataset):
            again = under_repeat or kind == "_ShuffleAndRepeatDataset"
            found["reshuffles"] = found["reshuffles"] or again
        if kind == "_ShuffleDataset" and batched_in_repeat:
            found["batched"] = found["batched"] or bool(
                getattr(dataset, "_reshuffle_each_iteration", True)
            )
        scan_functions(dataset)
        repeats = kind in _REPEAT_CLASSES
        batches = under_repeat and kind in _BATCH_CLASSES and not _drops_remainder(dataset)
        for parent in dataset._inputs():
            visit(parent, under_repeat or repeats, batched_in_repeat or batches)

    visit(ds, False, False)
    return PipelineFacts(
        tuple(sorted(python)),
        found["generator"],
        found["reshuffles"],
        tuple(sorted(stateful)),
        found["batched"],
    )


def _drops_remainder(dataset: Any) -> bool:
    try:
        return bool(tf_module().get_static_value(dataset._drop_remainder))
    except Exception:
        return False  # cannot tell: assume it keeps the remainder


def _unseeded(dataset: Any) -> bool:
    tf = tf_module()
    try:
        seeds = [int(tf.get_static_value(getattr(dataset, name))) for name in ("_seed", "_seed2")]
    except Exception:
        return True  # seeds hidden in a resource: cannot tell, assume unseeded
    return seeds == [0, 0]


def _unseeded_node(node: Any, nodes: Any) -> bool:
    # ShuffleDatasetV3(input, buffer_size, seed, seed2, ...); RandomDataset(seed, seed2, ...).
    first = 2 if node.op.startswith("Shuffle") else 0
    inputs = [name.split(":")[0] for name in node.input if not name.startswith("^")]
    by_name = {n.name: n for n in nodes}
    tf = tf_module()
    values = []
    for name in inputs[first : first + 2]:
        source = by_name.get(name)
        if source is None or source.op != "Const":
            return True
        values.append(int(tf.make_ndarray(source.attr["value"].tensor)))
    return values == [0, 0]


def check_checkpoint(facts: PipelineFacts) -> None:
    """What checkpoint=True cannot restore in this pipeline: refuse, or say so once."""
    if facts.generator:
        raise ValueError(
            "checkpoint=True cannot save this pipeline's position: tf.data cannot save the "
            "state of a Dataset.from_generator iterator. Stream it with checkpoint=False "
            "(resuming then replays the batches already delivered), or build the dataset "
            "with fastbridge.from_numpy or a tf.data source"
        )
    limits = []
    if facts.reshuffles_unseeded:
        limits.append(
            "an unseeded shuffle (or random dataset) runs again after a resume, under a "
            "repeat() or inside an interleave/flat_map, with new seeds: batches up to the end "
            "of the current epoch resume exactly, later epochs come in a different order. "
            "Pass shuffle(..., seed=N) (or call tf.random.set_seed) to make them exact"
        )
    if facts.reshuffles_batched:
        limits.append(
            "a shuffle that reshuffles each epoch is batched (keeping the remainder) before "
            "a repeat(): tf.data restores such an iterator saved at an epoch's end with the "
            "next epoch in another order. Repeat before batching (shuffle -> repeat -> "
            "batch), or batch with drop_remainder=True, to make every epoch exact"
        )
    if facts.stateful_random:
        limits.append(
            f"stateful random ops ({', '.join(facts.stateful_random)}) keep state that tf.data "
            "does not save: after a resume they draw different numbers. Use stateless random "
            "ops (tf.random.stateless_uniform, Dataset.random) to make them exact"
        )
    if limits:
        warn(
            "checkpoint=True cannot resume this pipeline exactly: " + "; and ".join(limits),
        )
