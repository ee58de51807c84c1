"""Shape numbers of one pore: Wadell sphericity from a smoothed surface mesh, and principal axes.

Sphericity (Wadell 1935) is ψ = π^(1/3) (6V)^(2/3) / A, the surface area of the sphere with the pore's volume
over the pore's own area: 1 for a sphere, 0.806 for a cube, less for rods and plates, never above 1
(the isoperimetric inequality). Some vendor pages call the reciprocal (≥ 1) "sphericity"; porelab, like
porespy, reports the ≤ 1 form.

The area of a voxelised pore is not its voxel-face area (a voxelised ball has ≈ 1.5× the ball's area in
faces), and the binary marching-cubes mesh still carries the staircase (balls read ψ ≈ 0.92) while it cuts
the edges of flat faces (a 2 × 6 × 6 plate reads 0.81 instead of 0.70). porelab therefore measures the
**smoothed surface**: the pore's mask, padded by two voxels, is Gaussian-filtered with σ = :data:`SMOOTH_SIGMA`
voxels per axis and meshed at level 0.5 by marching cubes in mm (``skimage.measure.marching_cubes`` with the
voxel spacing, ``mesh_surface_area``). ψ is that closed surface's own sphericity, π^(1/3) (6 V_s)^(2/3) / A_s
with V_s the volume it encloses (divergence theorem): smoothing shrinks the surface a little, and using its
own volume keeps ψ scale-consistent. The reported area is A = A_s (V / V_s)^(2/3), the smoothed surface
rescaled to the pore's voxel volume V, so that ψ = π^(1/3) (6V)^(2/3) / A holds with V = voxel count × voxel
volume. docs/experiments.md ("Pore shape and kind") has the measured errors against analytic shapes: balls
of 30-5,000 voxels read 0.93-0.96, axis-aligned cubes/plates/box rods read high by up to 0.10 at ≥ 100 voxels
(a mesh rounds their edges), cylinders within 0.03. Below ≈ 100 voxels a ball and a cube of the same voxel
count differ by a few voxels only, so no estimator from voxels tells ψ = 1 from 0.806 there.

References
----------
Wadell, H. (1935). Volume, shape, and roundness of quartz particles. The Journal of Geology 43(3), 250-280.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

SMOOTH_SIGMA = 0.5  # voxels; measured best balance between balls and flat-faced shapes (docs/experiments.md)
_PAD = 2  # >= the Gaussian's support (truncate 4 sigma) so the filtered pore never touches the array edge


def smoothed_surface(pore: np.ndarray, spacing=(1.0, 1.0, 1.0), sigma: float = SMOOTH_SIGMA):
    """Area and enclosed volume (mm², mm³) of the smoothed surface of one pore.

    Parameters
    ----------
    pore : (z, y, x) bool array holding one pore (e.g. its bounding box)
    spacing : voxel size (z, y, x) in mm
    sigma : Gaussian σ in voxels (per axis)

    Returns
    -------
    (area, volume) of the level-0.5 surface of the filtered, padded pore. A pore too thin to reach 0.5 after
    filtering (one voxel wide along two axes) is meshed at half its peak value instead.
    """
    from skimage.measure import marching_cubes, mesh_surface_area

    f = np.pad(np.asarray(pore, dtype=np.float32), _PAD)
    if sigma > 0:
        f = ndimage.gaussian_filter(f, sigma)
    level = min(0.5, 0.5 * float(f.max()))
    verts, faces, _, _ = marching_cubes(f, level, spacing=tuple(float(s) for s in spacing))
    area = float(mesh_surface_area(verts, faces))
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    volume = abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0)
    return area, volume


def wadell(volume, area):
    """Wadell sphericity π^(1/3) (6V)^(2/3) / A (1 for a sphere)."""
    return math.pi ** (1 / 3) * (6.0 * volume) ** (2 / 3) / area


def sphericity(pore: np.ndarray, spacing=(1.0, 1.0, 1.0), sigma: float = SMOOTH_SIGMA):
    """Wadell sphericity of one pore and its surface area in mm² (see the module docstring).

    Returns
    -------
    (psi, area): ψ of the smoothed surface (≤ 1; rounding can give 1 + 1e-15, clipped), and
    A = A_s (V / V_s)^(2/3) with V the voxel count × voxel volume.
    """
    area_s, vol_s = smoothed_surface(pore, spacing, sigma)
    v = float(np.count_nonzero(pore)) * spacing[0] * spacing[1] * spacing[2]
    if area_s <= 0 or vol_s <= 0:
        return float("nan"), float("nan")
    return min(1.0, wadell(vol_s, area_s)), area_s * (v / vol_s) ** (2 / 3)


def principal_axes(cov: np.ndarray):
    """Axis lengths and directions of the solid ellipsoids with the given second moments.

    Parameters
    ----------
    cov : (n, 3, 3) covariance matrices of voxel positions in mm, (z, y, x) order, each voxel's own extent
        included (s²/12 per axis)

    Returns
    -------
    axes : (n, 3) full lengths 2√(5λ), descending (major, mid, minor); a solid ellipsoid with semi-axis a
        has variance a²/5 along it
    vectors : (n, 3, 3) unit directions, ``vectors[:, :, k]`` belongs to ``axes[:, k]`` (z, y, x components)
    """
    lam, vec = np.linalg.eigh(cov)
    lam, vec = np.clip(lam[:, ::-1], 0, None), vec[:, :, ::-1]
    return 2.0 * np.sqrt(5.0 * lam), vec


def tilt_from_z_deg(vectors: np.ndarray) -> np.ndarray:
    """Angle (degrees, 0-90) between each unit vector (n, 3; z first) and the build axis z."""
    return np.degrees(np.arccos(np.clip(np.abs(vectors[:, 0]), 0.0, 1.0)))
