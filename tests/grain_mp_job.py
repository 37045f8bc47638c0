"""A job that streams a Grain pipeline with multiprocess prefetch (run by test_grain.py).

``python grain_mp_job.py full``: print every batch. ``python grain_mp_job.py first N STATE``:
print N batches and write the stream's state to STATE (as a training job writes it next to
its train state). ``python grain_mp_job.py resume STATE``: print the rest, from STATE.
Grain's workers import this module, hence the ``__main__`` guard.
"""

import json
import sys

import grain
import numpy as np
from fastbridge import stream


def double(x):
    return np.int32(x) * np.ones(2, np.int32)


def pipeline():
    base = grain.MapDataset.range(40).shuffle(seed=5).map(double).batch(4).to_iter_dataset()
    return base.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=2))


def main(mode: str, *args: str) -> None:
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # Grain reads absl flags; a script outside absl.app must say so
    if mode == "full":
        batches = [np.asarray(b).tolist() for b in stream(pipeline(), backend="numpy")]
    elif mode == "first":
        count, path = int(args[0]), args[1]
        with stream(pipeline(), prefetch=3) as s:
            batches = [np.asarray(next(s)).tolist() for _ in range(count)]
            with open(path, "w") as f:
                json.dump(s.state(), f)
    else:
        with open(args[0]) as f:
            state = json.load(f)
        with stream(pipeline(), state=state, backend="direct") as s:
            batches = [np.asarray(b).tolist() for b in s]
    print(json.dumps(batches))


if __name__ == "__main__":
    main(*sys.argv[1:])
