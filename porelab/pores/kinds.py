"""What kind of pore: a readable rule on the shape numbers of :func:`porelab.pores.pore_table`.

Laser powder-bed fusion leaves three kinds of internal pores, plus pores open to the part's skin:

* ``gas`` — trapped gas: near-spherical (Wadell ψ high, axes nearly equal).
* ``keyhole`` — the collapse of a deep vapour depression: elongated along the build direction z.
* ``lack_of_fusion`` — unmelted powder between tracks and layers: flat in the layer plane (its shortest
  axis close to z) and irregular (low ψ).
* ``surface`` — a pore that touches the part's surface (has a voxel outside the watertight object or a
  6-neighbour there): open to the outside, whatever its shape. Needs an object mask; the edges of the
  field of view are not the part's surface.

The rule, in order (first match wins; thresholds in :data:`RULE`):

1. open to the part's surface → ``surface``;
2. flatness (minor / mid axis) ≤ ``flat_max`` and the minor axis within ``flat_normal_tilt_max_deg`` of z
   → ``lack_of_fusion``;
3. elongation (major / mid axis) ≥ ``elongation_min`` and the major axis within ``keyhole_tilt_max_deg``
   of z → ``keyhole``;
4. sphericity < ``irregular_sphericity_max`` → ``lack_of_fusion`` (irregular, not flat enough for 2);
5. otherwise → ``gas``.

The thresholds were tuned by ``benchmarks/pore_kinds.py --tune`` on the exact pores of simulated phantoms
(seeds 0-7) and measured on a seed the tuning never saw (docs/experiments.md, "Pore shape and kind").
"""

from __future__ import annotations

import numpy as np

KINDS = ("gas", "keyhole", "lack_of_fusion", "surface")

RULE = {
    "flat_max": 0.65,
    "flat_normal_tilt_max_deg": 35.0,
    "elongation_min": 1.1,
    "keyhole_tilt_max_deg": 35.0,
    "irregular_sphericity_max": 0.88,
}


def classify(sphericity, elongation, flatness, axis_tilt_deg, normal_tilt_deg, surface, rule=None):
    """Kind of each pore by the rule in the module docstring.

    Parameters
    ----------
    sphericity, elongation, flatness, axis_tilt_deg, normal_tilt_deg : (n,) arrays
        Wadell ψ; major / mid axis; minor / mid axis; angle of the major axis to z; angle of the minor axis
        to z (degrees). NaN (undefined) never satisfies a threshold.
    surface : (n,) bool — open to the part's surface
    rule : dict, optional — thresholds overriding :data:`RULE` (for tuning)

    Returns
    -------
    (n,) array of str, each one of :data:`KINDS`.
    """
    r = dict(RULE, **(rule or {}))
    psi, elong, flat = (np.asarray(a, dtype=np.float64) for a in (sphericity, elongation, flatness))
    tilt, ntilt = np.asarray(axis_tilt_deg, dtype=np.float64), np.asarray(normal_tilt_deg, dtype=np.float64)
    out = np.full(psi.shape, "gas", dtype=object)
    irregular = psi < r["irregular_sphericity_max"]
    keyhole = (elong >= r["elongation_min"]) & (tilt <= r["keyhole_tilt_max_deg"])
    flat_lof = (flat <= r["flat_max"]) & (ntilt <= r["flat_normal_tilt_max_deg"])
    out[irregular] = "lack_of_fusion"
    out[keyhole] = "keyhole"
    out[flat_lof] = "lack_of_fusion"
    out[np.asarray(surface, dtype=bool)] = "surface"
    return out
