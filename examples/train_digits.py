"""Train a small flax.nnx MLP on scikit-learn's digits, checkpoint with orbax, resume exactly.

The whole recipe in one file (docs/training.md explains each step):

* batches come from tf.data (or Grain) through ``fastbridge.stream(..., pad_last=True)``: the
  short last batch of every epoch is padded to full size and comes with a mask, which the loss
  uses, so the jitted train step compiles once;
* every ``--save-every`` steps one orbax checkpoint holds both the model + optimizer state and
  the stream's position (``Stream.state()``, a JSON-able dict), in one step directory;
* on start, the latest checkpoint is restored and the stream resumes right after the last
  batch that checkpoint's train state had consumed: no batch is trained on twice, none is
  skipped, and the final parameters are bit for bit those of an uninterrupted run.

Run it, interrupt it, run it again::

    python examples/train_digits.py --ckpt-dir /tmp/digits --save-every 8 --stop-after 21
    python examples/train_digits.py --ckpt-dir /tmp/digits --save-every 8  # resumes at step 16

``--stop-after K`` simulates a preemption: the process exits hard (``os._exit``) after step K,
once the checkpoints already started have been written. Needs flax, optax, orbax-checkpoint,
scikit-learn, and tensorflow or grain.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fastbridge
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from sklearn.datasets import load_digits

TRAIN_SIZE = 1500  # of 1797 digits; the other 297 are the evaluation set


def load_data() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The digits as ``{"image": float32 [n, 64] in [0, 1], "label": int32 [n]}``, split in
    two. Ships with scikit-learn: nothing is downloaded."""
    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)
    train = {"image": images[:TRAIN_SIZE], "label": labels[:TRAIN_SIZE]}
    test = {"image": images[TRAIN_SIZE:], "label": labels[TRAIN_SIZE:]}
    return train, test


def tf_source(train: dict[str, np.ndarray], batch_size: int, epochs: int, seed: int) -> Any:
    """A seeded tf.data pipeline that reshuffles every epoch.

    ``batch`` comes before ``repeat`` so that every epoch ends with its own short batch (which
    ``pad_last`` pads). The seed makes the pipeline deterministic, which is what lets the
    stream resume it by replaying: a new process builds it again and skips the batches the
    saved stream had delivered.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(train)
    ds = ds.shuffle(len(train["label"]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).repeat(epochs)


def grain_source(train: dict[str, np.ndarray], batch_size: int, epochs: int, seed: int) -> Any:
    """The same epochs from Grain. ``repeat`` reseeds the shuffle for each epoch, and Grain's
    iterator state (saved by the stream after each batch) is what a resume restores."""
    import grain

    records = [{key: leaf[i] for key, leaf in train.items()} for i in range(len(train["label"]))]
    ds = grain.MapDataset.source(records).shuffle(seed=seed).batch(batch_size).repeat(epochs)
    return ds.to_iter_dataset()


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(64, 128, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x)))


traces = 0  # how many times train_step was traced (compiled): once, thanks to pad_last


@nnx.jit
def train_step(
    model: MLP, optimizer: nnx.Optimizer[MLP], batch: dict[str, jax.Array], mask: jax.Array
) -> jax.Array:
    global traces
    traces += 1  # runs while tracing only

    def loss_fn(model: MLP) -> jax.Array:
        logits = model(batch["image"])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        # Padding rows (mask False) must not count: a masked mean over the real rows.
        return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1)

    loss: jax.Array
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model: MLP, images: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(model(images), axis=-1) == labels)


def digest(batch: dict[str, jax.Array], mask: jax.Array) -> str:
    """A short fingerprint of one batch, for ``--log-batches``."""
    h = hashlib.sha256()
    for array in (batch["image"], batch["label"], mask):
        h.update(np.asarray(array).tobytes())
    return h.hexdigest()[:16]


def params_of(model: MLP) -> dict[str, Any]:
    """The parameters as flat NumPy arrays named by their path, e.g. ``hidden/kernel``."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, path)): np.asarray(v.get_value()) for path, v in flat}


def train_state(model: MLP, optimizer: nnx.Optimizer[MLP]) -> dict[str, Any]:
    """What a checkpoint holds besides the stream: the parameters and the optimizer's state
    (its step count and Adam moments; an ``nnx.Optimizer`` does not hold the model)."""
    return {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--source", choices=("tf", "grain"), default="tf")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, help="stop after this many steps (default: all epochs)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-dir", type=Path, help="checkpoint here, resume from here")
    p.add_argument("--save-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--stop-after", type=int, help="simulate a preemption after this step")
    p.add_argument("--out", type=Path, help="write the final parameters to this .npz")
    p.add_argument("--log-batches", type=Path, help="append 'step digest' per batch trained")
    args = p.parse_args(None if argv is None else list(argv))
    for name in ("epochs", "steps", "batch_size", "save_every", "stop_after"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def restore(
    manager: ocp.CheckpointManager, model: MLP, optimizer: nnx.Optimizer[MLP]
) -> dict[str, Any] | None:
    """Load the latest checkpoint into ``model`` and ``optimizer``; returns the stream's saved
    position (``None`` when there is no checkpoint yet: a fresh start)."""
    latest = manager.latest_step()
    if latest is None:
        return None
    # The freshly initialised state is the restore target: it gives orbax every array's shape,
    # dtype and sharding.
    restored = manager.restore(
        latest,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(train_state(model, optimizer)),
            data=ocp.args.JsonRestore(),
        ),
    )
    nnx.update(model, restored.state["model"])
    nnx.update(optimizer, restored.state["optimizer"])
    saved_stream: dict[str, Any] = restored.data
    # Both were saved after the same step: the stream had delivered exactly the batches the
    # optimizer had taken. Anything else means state() was called at the wrong moment (see
    # the save in main), and resuming would skip or repeat batches.
    taken = int(optimizer.step.get_value())
    if not saved_stream["batches"] == taken == latest:
        raise RuntimeError(
            f"checkpoint {latest}: the optimizer took {taken} steps but the stream "
            f"delivered {saved_stream['batches']} batches"
        )
    print(f"resumed from step {latest}")
    return saved_stream


def save(
    manager: ocp.CheckpointManager,
    step: int,
    model: MLP,
    optimizer: nnx.Optimizer[MLP],
    stream_state: dict[str, Any],
) -> None:
    """One checkpoint: the train state and the stream's position go in one step directory,
    which orbax commits as a whole, so a crash mid-save leaves the previous one intact."""
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(train_state(model, optimizer)),
            data=ocp.args.JsonSave(stream_state),
        ),
    )


def make_source(args: argparse.Namespace, train: dict[str, np.ndarray], epochs: int) -> Any:
    """The ``--source`` pipeline, holding ``epochs`` epochs.

    Grain resumes through its own iterator state. tf.data resumes by replay (re-reading and
    dropping the batches delivered before the checkpoint), not with checkpoint=True: with
    tensorflow 2.21, an iterator saved at the end of an epoch (which tf.data's own prefetch
    reaches at a moment that depends on timing) restores the next epoch of a seeded
    reshuffle_each_iteration shuffle in another order than the uninterrupted run.
    """
    if args.source == "tf":
        return tf_source(train, args.batch_size, epochs, args.seed)
    return grain_source(train, args.batch_size, epochs, args.seed)


def evaluate(model: MLP, test: dict[str, np.ndarray], step: int, epoch: int, loss: Any) -> None:
    """Print the loss of the last batch and the accuracy on the evaluation set."""
    acc = accuracy(model, jnp.asarray(test["image"]), jnp.asarray(test["label"]))
    print(f"step {step} (epoch {epoch}): loss {float(loss):.4f}, test accuracy {float(acc):.3f}")


def preempt(manager: ocp.CheckpointManager | None, step: int) -> None:
    """Exit as a preemption would, once the checkpoints already started are written."""
    if manager is not None:
        manager.wait_until_finished()  # saves are asynchronous
    print(f"preempted after step {step}", flush=True)
    os._exit(3)  # no cleanup, no atexit: as a preemption would leave it


def main(argv: Iterable[str] | None = None) -> None:
    args = parse_args(argv)
    train, test = load_data()
    per_epoch = math.ceil(TRAIN_SIZE / args.batch_size)
    total = args.steps if args.steps is not None else args.epochs * per_epoch
    epochs = math.ceil(total / per_epoch)  # the source holds just enough epochs

    model = MLP(nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    manager = None
    saved_stream: dict[str, Any] | None = None
    if args.ckpt_dir is not None:
        manager = ocp.CheckpointManager(
            args.ckpt_dir.absolute(),  # orbax wants an absolute path
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
        )
        saved_stream = restore(manager, model, optimizer)
    source = make_source(args, train, epochs)

    step = saved_stream["batches"] if saved_stream is not None else 0
    log = args.log_batches.open("a") if args.log_batches is not None else None
    with fastbridge.stream(source, prefetch=4, pad_last=True, state=saved_stream) as s:
        for batch, mask in s:
            loss = train_step(model, optimizer, batch, mask)
            step += 1
            if log is not None:
                print(step, digest(batch, mask), file=log, flush=True)
            if manager is not None and step % args.save_every == 0:
                # s.state() now: after the step that consumed this batch, before the next
                # next(). It is the position right after this batch, however far the stream
                # has read ahead.
                save(manager, step, model, optimizer, s.state())
            if step % per_epoch == 0 or step == total:
                evaluate(model, test, step, math.ceil(step / per_epoch), loss)
            if step == args.stop_after:
                preempt(manager, step)
            if step == total:
                break

    if log is not None:
        log.close()
    if manager is not None:
        manager.wait_until_finished()
        manager.close()
    print(f"done: {step} steps, train_step traced {traces} time(s)")
    if args.out is not None:
        np.savez(args.out, **params_of(model))


if __name__ == "__main__":
    main()
