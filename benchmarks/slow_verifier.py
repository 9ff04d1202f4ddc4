"""A verifier that scores like `numeric` after sleeping DELAY_S per sample: the stand-in for a slow verifier (a code
sandbox, a model judge) in benchmarks/async_overlap.py. Loaded as `benchmarks.slow_verifier:numeric_slow`."""

import time

from rlpt.verifiers import VERIFIERS

DELAY_S = 0.004


def numeric_slow(prompt, completion):
    time.sleep(DELAY_S)
    return VERIFIERS["numeric"](prompt, completion)
