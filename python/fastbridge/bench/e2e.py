"""The end-to-end scenario: a real input pipeline (JPEG decode, augmentation, shuffle), a small
MLP trained on it, and the training loop that times each handoff's ``next()``."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .batches import tf_module
from .resources import RssSampler
from .routes import Route, close_route, open_route
from .step import Step, block

E2E_IMAGE = (32, 32, 3)
E2E_CLASSES = 10


def e2e_dataset(records: int, batch: int, seed: int = 0) -> Any:
    """A real input pipeline: JPEG decode and augmentation in a parallel map, shuffle, batch."""
    tf = tf_module()
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (records, *E2E_IMAGE), dtype=np.uint8)
    encoded = [tf.io.encode_jpeg(image).numpy() for image in images]
    labels = rng.integers(0, E2E_CLASSES, records, dtype=np.int32)

    def decode(data: Any, label: Any) -> dict[str, Any]:
        image = tf.io.decode_jpeg(data, channels=3)
        image = tf.image.random_flip_left_right(image, seed=seed)
        image = tf.cast(image, tf.float32) / 255.0
        return {"image": image, "label": label}

    ds = tf.data.Dataset.from_tensor_slices((encoded, labels)).repeat()
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    # Every handoff opens its own iterator, which refills the shuffle buffer: keep it a few batches.
    ds = ds.shuffle(4 * batch, seed=seed).batch(batch, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def mlp_step(hidden: int, batch: int) -> tuple[Step, Callable[[], Any]]:
    """A jitted SGD step of a small MLP on the e2e batches, and its initial parameters."""
    features = int(np.prod(E2E_IMAGE))

    def init() -> Any:
        rng = np.random.default_rng(0)
        return {
            "w1": jnp.asarray(rng.standard_normal((features, hidden), np.float32) * 0.02),
            "b1": jnp.zeros(hidden),
            "w2": jnp.asarray(rng.standard_normal((hidden, E2E_CLASSES), np.float32) * 0.02),
            "b2": jnp.zeros(E2E_CLASSES),
        }

    def loss(params: Any, batch: Any) -> jax.Array:
        x = batch["image"].reshape(batch["image"].shape[0], -1)
        h = jax.nn.relu(x @ params["w1"] + params["b1"])
        logits = h @ params["w2"] + params["b2"]
        labels = jax.nn.one_hot(batch["label"], E2E_CLASSES)
        return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1))

    @jax.jit
    def train(params: Any, batch: Any) -> Any:
        grads = jax.grad(loss)(params, batch)
        return jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)

    probe = {
        "image": jnp.zeros((batch, *E2E_IMAGE), jnp.float32),
        "label": jnp.zeros((batch,), jnp.int32),
    }
    params = init()
    train(params, probe)
    times = []
    for _ in range(10):
        started = time.perf_counter()
        params = train(params, probe)
        block(params)
        times.append(time.perf_counter() - started)
    return Step(train, 0, statistics.median(times)), init


def measure_e2e(
    handoff: Route,
    ds: Any,
    *,
    steps: int,
    warmup: int,
    step: Step,
    init: Callable[[], Any],
    resident: Any,
) -> dict[str, Any]:
    """Train ``steps`` steps on ``handoff``'s batches: steps/s and the share spent waiting."""
    gc.collect(1)
    params = init()
    iterator = open_route(handoff, ds)
    try:
        for _ in range(warmup):
            batch = next(iterator)
            params = step(params, resident if handoff.kind == "floor" else batch)
        block(params)
        times: list[float] = []
        with RssSampler() as sampler:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(steps):
                started = time.perf_counter()  # next() alone, as in ``loop.measure``
                item = next(iterator)
                times.append(time.perf_counter() - started)
                batch = item
                # The floor measures the pipeline alone: it drops the batch and skips the step.
                if handoff.kind != "floor":
                    params = step(params, batch)
                    block(params)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            del batch, item
    finally:
        close_route(iterator)
    return {
        "batches": steps,
        "steps_per_s": steps / wall,
        "wait_fraction": sum(times) / wall,
        "consumer_s": sum(times) / steps,
        "wall_s": wall / steps,
        "cpu_s": cpu / steps,
        "rss_peak": sampler.peak,
        "next_s": [round(t, 9) for t in times],
    }
