"""The simulated dataset in the layout of Iuso et al. (2024): five cylinders (the cross-validation set: one
Ti6Al4V, two CoCr, two 316L, scanned for comparable quality) and one hard 316L cube (fewer projections, lower
exposure, stronger beam hardening, rings), each with its exact truth and object masks, and ``manifest.json``
(format ``porelab-dataset/2``, the truth as each scan's labels; :mod:`porelab.dataset` reads and writes the
manifests, its names are re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from porelab.dataset import FORMAT, Dataset, SampleInfo, entry, load_manifest
from porelab.errors import ConfigError
from porelab.io import atomic_path, prepare_output, write_json

# name, role, part, material, relative exposure (comparable quality: each material's photon count is set for
# a similar contrast-to-noise ratio, as the paper's operators did; a little spread between the samples)
SAMPLES = [
    ("cyl1", "cv", "cylinder", "Ti6Al4V", 1.00),
    ("cyl2", "cv", "cylinder", "CoCr", 0.95),
    ("cyl3", "cv", "cylinder", "CoCr", 1.10),
    ("cyl4", "cv", "cylinder", "316L", 1.00),
    ("cyl5", "cv", "cylinder", "316L", 0.90),
    ("cube", "test", "cube", "316L", 1.00),
]


@dataclass(frozen=True)
class Preset:
    """Sizes and scan settings of one dataset preset.

    ``cyl_shape``/``cube_shape`` are (z, y, x) voxels; the cylinder diameter is 0.45 of the field (Ø 5 mm)
    and the cube edge 0.5 of the field (9 mm), which sets each scan's voxel size. ``exposure`` holds the
    unattenuated photon count per detector pixel for each material (cylinders) and for the cube.
    """

    name: str
    cyl_shape: tuple[int, int, int]
    cube_shape: tuple[int, int, int]
    cyl_projections: int
    cube_projections: int
    exposure: dict
    cyl_hardening: float = 0.05
    cube_hardening: float = 0.2
    cyl_blur: float = 0.8
    cube_blur: float = 1.0
    cyl_ring: float = 0.003
    cube_ring: float = 0.012
    porosity: float = 0.75
    extra: dict = field(default_factory=dict)
    # what makes real scans hard (all off in smoke / quick / paper; see docs/simulator.md, "Hard scans")
    cone: bool = False  # circular-orbit cone beam + FDK (projections over 360°) instead of parallel beam
    scatter: float = 0.0  # scatter-to-primary ratio of the open beam
    readout: float = 0.0  # electronic noise (counts, std) with a one-count floor: photon starvation
    texture: float = 0.0  # relative std of the microstructure texture in µ
    drift: float = 0.0  # peak relative amplitude of the low-order density drift
    extra_pores: dict = field(default_factory=dict)  # counts of small / cluster / surface / large pores

    @property
    def cyl_voxel_mm(self) -> float:
        return 5.0 / (0.45 * self.cyl_shape[2])

    @property
    def cube_voxel_mm(self) -> float:
        return 9.0 / (0.5 * self.cube_shape[2])


PRESETS: dict[str, Preset] = {
    # seconds: tests and CI (a larger porosity so that every tiny scan holds several pores)
    "smoke": Preset("smoke", (32, 48, 48), (32, 48, 48), 72, 48,
                    {"Ti6Al4V": 500.0, "CoCr": 280.0, "316L": 280.0, "cube": 110.0}, porosity=2.0),
    # the default: about a minute for the whole dataset on a 2-core CPU
    "quick": Preset("quick", (96, 128, 128), (96, 128, 128), 200, 134,
                    {"Ti6Al4V": 1500.0, "CoCr": 600.0, "316L": 600.0, "cube": 350.0}),
    # the paper's 10 µm voxels: Ø5 mm = 500 voxels in a 1111² field, 20 mm = 2000 slices; the 9 mm cube in
    # a 1800² field, 4283 / 2878 projections (2.5 G / 3.2 G voxels per scan: a big machine's job). Photon
    # counts keep the quick preset's noise in 1/mm: FBP noise variance ∝ 1 / (I0 · projections · voxel²)
    "paper": Preset("paper", (2000, 1111, 1111), (1000, 1800, 1800), 4283, 2878,
                    {"Ti6Al4V": 5300.0, "CoCr": 2100.0, "316L": 2100.0, "cube": 3200.0}),
    # the quick preset's sizes with everything that makes real scans hard for filters switched on
    "hard": Preset("hard", (96, 128, 128), (96, 128, 128), 200, 134,
                   {"Ti6Al4V": 1500.0, "CoCr": 600.0, "316L": 600.0, "cube": 350.0},
                   cyl_hardening=0.15, cube_hardening=0.4, cyl_ring=0.01, cube_ring=0.02, cone=True,
                   scatter=0.1, readout=3.0, texture=0.03, drift=0.05,
                   extra_pores={"small": 40, "cluster": 4, "surface": 6, "large": 1}),
}


#: presets of the independent generator :mod:`porelab.simulate.othergen` (other parts, pores, texture and
#: imaging physics, grey values in arbitrary units: docs/simulator.md, "Another generator (othergen)")
OTHER_PRESETS = ("othergen",)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        choices = ", ".join([*PRESETS, *OTHER_PRESETS])
        raise ConfigError(f"unknown simulation preset {name!r}; choose one of: {choices}") from None


def sample_plan(preset: str | Preset) -> list[dict]:
    """The scan settings of every sample of a preset (what the manifest's ``quality`` records)."""
    pr = get_preset(preset) if isinstance(preset, str) else preset
    plan = []
    for name, role, part, material, rel in SAMPLES:
        cube = part == "cube"
        plan.append({
            "name": name, "role": role, "shape": part, "material": material,
            "dims": pr.cube_shape if cube else pr.cyl_shape,
            "voxel_mm": pr.cube_voxel_mm if cube else pr.cyl_voxel_mm,
            "quality": {
                "projections": pr.cube_projections if cube else pr.cyl_projections,
                "exposure": float(round(rel * pr.exposure["cube" if cube else material], 1)),
                "hardening": pr.cube_hardening if cube else pr.cyl_hardening,
                "blur": pr.cube_blur if cube else pr.cyl_blur,
                "ring": pr.cube_ring if cube else pr.cyl_ring,
                **{k: v for k, v in (("cone", pr.cone), ("scatter", pr.scatter), ("readout", pr.readout)) if v},
            },
        })
    return plan


def simulate_dataset(out_dir, preset: str = "quick", seed: int = 0, progress: bool = True,
                     porosity: float | None = None, overwrite: bool = False) -> Path:
    """Simulate the paper's dataset layout into ``out_dir`` and return the path of ``manifest.json``.

    Writes per sample ``<name>_scan.npy`` (float32 reconstructed attenuation, 1/mm), ``<name>_truth.npy``
    and ``<name>_object.npy`` (uint8) and ``<name>_pores.json`` (the placed pores), each atomically, and
    ``manifest.json`` last (the ``.npy`` files get a ``.npy.json`` spacing sidecar, see
    :func:`porelab.io.write_volume`). Everything is written into a temporary folder beside ``out_dir``
    that is renamed to ``out_dir`` when complete, so an interrupted run leaves ``out_dir`` as it was.

    Parameters
    ----------
    out_dir : folder (created). If it exists it must be empty, or an earlier porelab dataset (replaced only
        with ``overwrite=True``); anything else raises ``ConfigError`` and is left untouched.
    preset : ``smoke`` (32×48×48, seconds), ``quick`` (96×128×128, about a minute on 2 cores), ``hard``
        (quick's sizes with cone beam, scatter, starvation, stronger cupping and rings, texture, drift and
        hard pores: docs/simulator.md, "Hard scans"), ``paper`` (10 µm voxels, big machines only) or
        ``othergen`` (quick's sizes from another generator, :mod:`porelab.simulate.othergen`: hexagonal prisms
        and tubes, other pores and texture, an image-domain scanner model, grey values in arbitrary units).
    seed : master seed; the same seed gives identical files.
    progress : show a tqdm bar per sample on stderr.
    porosity : target porosity in percent of each part (0.1-2 % is the realistic range); default the
        preset's (0.75 %; 2 % for ``smoke``).
    overwrite : replace an existing porelab dataset (or other porelab output) in ``out_dir``.
    """
    if preset in OTHER_PRESETS:
        from porelab.simulate import othergen

        pr = othergen.get_preset(preset)
    else:
        pr = get_preset(preset)
    porosity = pr.porosity if porosity is None else float(porosity)
    if not 0.0 < porosity <= 5.0:
        raise ConfigError(f"porosity {porosity} % is out of range (0-5 %; realistic parts 0.1-2 %)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed {seed!r} must be a non-negative integer")
    out = prepare_output(out_dir, overwrite=overwrite, is_dir=True)
    with atomic_path(out, is_dir=True, overwrite=overwrite, marker="simulate") as tmp:
        if preset in OTHER_PRESETS:
            othergen.write_dataset(tmp, pr, int(seed), porosity, progress)
        else:
            _simulate_into(tmp, pr, int(seed), porosity, progress)
    return Path(out_dir) / "manifest.json"


def _simulate_into(out: Path, pr: Preset, seed: int, porosity: float, progress: bool) -> Path:
    """Write every sample and ``manifest.json`` into the existing folder ``out``."""
    from porelab.simulate.ct import scan_phantom
    from porelab.simulate.phantom import make_phantom

    entries = []
    seeds = np.random.SeedSequence(int(seed)).spawn(2 * len(SAMPLES))
    from porelab.runtime import progress as progress_bar

    bar = progress_bar(enabled=progress, total=len(SAMPLES), desc=f"simulate ({pr.name})", unit="scan",
                       leave=True)
    for i, plan in enumerate(sample_plan(pr)):
        name, q = plan["name"], plan["quality"]
        ph = make_phantom(plan["dims"], part=plan["shape"], material=plan["material"], porosity=porosity,
                          seed=np.random.default_rng(seeds[2 * i]), texture=pr.texture, drift=pr.drift,
                          extra_pores=pr.extra_pores)
        rec = scan_phantom(ph.mu, voxel_mm=plan["voxel_mm"], projections=q["projections"],
                           exposure=q["exposure"], hardening=q["hardening"], blur=q["blur"], ring=q["ring"],
                           seed=int(seeds[2 * i + 1].generate_state(1)[0]), cone=bool(q.get("cone")),
                           scatter=q.get("scatter", 0.0), readout=q.get("readout", 0.0))
        entries.append(write_sample(out, name, plan["role"], rec, ph, voxel_mm=float(plan["voxel_mm"]),
                                    part=plan["shape"], material=plan["material"], quality=q))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return write_json(out / "manifest.json", {"format": FORMAT, "created_by": "porelab simulate",
                                              "preset": pr.name, "seed": int(seed), "samples": entries})


def write_sample(out: Path, name: str, role: str, scan: np.ndarray, phantom, *, voxel_mm: float, part: str,
                 material: str, quality: dict) -> dict:
    """Write one simulated sample into ``out`` and return its manifest entry: ``<name>_scan.npy`` (float32),
    ``<name>_truth.npy`` and ``<name>_object.npy`` from ``phantom`` (``.truth``, ``.object``, ``.pores``,
    ``.porosity_percent``), each atomically with a spacing sidecar, and ``<name>_pores.json``. Shared by
    both generators, so their datasets have one layout."""
    from porelab.io import write_volume

    vox = float(voxel_mm)
    files = {k: f"{name}_{k}.npy" for k in ("scan", "truth", "object")}
    for key, arr in (("scan", np.asarray(scan, np.float32)), ("truth", phantom.truth), ("object", phantom.object)):
        write_volume(out / files[key], arr, spacing=(vox, vox, vox))  # atomic; spacing in a sidecar
    write_json(out / f"{name}_pores.json", {
        "name": name, "material": material, "shape": part, "voxel_mm": vox,
        "porosity_percent": phantom.porosity_percent, "pores": phantom.pores,
    })
    return entry(name, role, files["scan"], shape=scan.shape, dtype="float32", spacing=(vox, vox, vox),
                 labels=files["truth"], obj=files["object"], root=out, part=part, material=material,
                 quality=quality, porosity_percent=round(phantom.porosity_percent, 4),
                 pore_count=len(phantom.pores), pores=f"{name}_pores.json")


__all__ = ["FORMAT", "OTHER_PRESETS", "PRESETS", "SAMPLES", "Dataset", "Preset", "SampleInfo", "get_preset",
           "load_manifest", "sample_plan", "simulate_dataset", "write_sample"]
