"""Why is my job slow? ``python -m fastbridge.doctor MODULE:FACTORY [--step MODULE:FUNCTION]``.

Measures, on the user's own data and interleaved in rounds: the source alone, each handoff
route (fastbridge's backends and the plain ``jax.device_put`` loop), the step alone and the
full loop; then names the part that bounds the job (input pipeline, handoff or step), the
input-bound share, the backend and ``prefetch`` to use, and the pipeline's own knobs worth
trying. Submodules: ``_load`` (specs, factories), ``_measure`` (runs and the budget's plan),
``_advice`` (verdict and knobs), ``_report`` (text, JSON, plot), ``_cli``.

>>> from fastbridge.doctor import diagnose
>>> import numpy as np
>>> diagnose(lambda: [np.ones(8, np.float32)] * 30, budget=15, progress=False).kind
'iterable'
"""

from __future__ import annotations

from ._cli import main
from ._diagnose import diagnose
from ._diagnosis import Diagnosis
from ._load import DoctorError, StepError

__all__ = ["Diagnosis", "DoctorError", "StepError", "diagnose", "main"]
