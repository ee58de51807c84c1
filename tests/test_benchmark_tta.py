"""benchmarks/tta.py ``flipped_mean``: the mean over mirrored copies, each mirrored back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def _tta():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tta.py"
    spec = importlib.util.spec_from_file_location("tta_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flipped_mean_is_the_identity_for_an_equivariant_score_and_symmetrises_a_positional_one():
    tta = _tta()
    rng = np.random.default_rng(0)
    raw = rng.random((4, 5, 6)).astype(np.float32)
    seen = []

    def square(x):
        seen.append(x.copy())
        return x ** 2

    np.testing.assert_allclose(tta.flipped_mean(square, raw, (0, 1, 2)), raw ** 2, rtol=1e-6)
    assert len(seen) == 8 and len({s.tobytes() for s in seen}) == 8      # every flip once, identity included

    ramp = np.arange(6, dtype=np.float32)                                  # a score that depends on x only
    out = tta.flipped_mean(lambda x: np.broadcast_to(ramp, x.shape), raw, (2,))
    np.testing.assert_allclose(out, np.full(raw.shape, ramp.mean()))      # x and its mirror averaged
    out = tta.flipped_mean(lambda x: np.broadcast_to(ramp, x.shape), raw, (0, 1))
    np.testing.assert_allclose(out, np.broadcast_to(ramp, raw.shape))     # flips elsewhere leave it alone
