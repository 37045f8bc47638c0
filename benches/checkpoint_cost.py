"""What ``checkpoint=True`` costs on a tf.data pipeline with a shuffle buffer.

tf.data saves an iterator state before the first read and at every ``state()``; that state holds
the shuffle buffer, so both grow with it. Run: ``python benches/checkpoint_cost.py``.
"""

import json
import time

import numpy as np
import tensorflow as tf
from fastbridge import stream


def pipeline(buffer: int) -> tf.data.Dataset:
    return tf.data.Dataset.range(10**7).shuffle(buffer).batch(32)


def main() -> None:
    for buffer in (1_000, 10_000, 100_000):
        for checkpoint in (False, True):
            seconds = []
            for _ in range(3):
                start = time.perf_counter()
                with stream(pipeline(buffer), checkpoint=checkpoint, prefetch=2) as batches:
                    next(batches)
                seconds.append(time.perf_counter() - start)
            print(
                f"shuffle({buffer}) checkpoint={checkpoint}: first batch "
                f"{1e3 * np.median(seconds):.0f} ms (median of 3)"
            )
        with stream(pipeline(buffer), checkpoint=True, prefetch=2) as batches:
            for _ in range(10):
                next(batches)
            start = time.perf_counter()
            state = batches.state()
            took = time.perf_counter() - start
        megabytes = len(json.dumps(state)) / 1e6
        print(f"  state() after 10 batches: {1e3 * took:.0f} ms, {megabytes:.1f} MB")


if __name__ == "__main__":
    main()
