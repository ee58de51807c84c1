"""Simulated X-ray CT scans of additively manufactured metal parts with exact pore ground truth.

* :mod:`porelab.simulate.phantom` — parts (cylinder, cube), materials, rough skin, density, three pore kinds;
* :mod:`porelab.simulate.ct` — projection physics (hardening, blur, Poisson noise, rings), FBP, ``degrade``;
* :mod:`porelab.simulate.dataset` — the paper's dataset layout, ``simulate_dataset`` and ``load_manifest``.

See ``docs/simulator.md``. Submodules are imported on use (scikit-image loads only when scanning).
"""

__all__ = ["ct", "dataset", "phantom"]
