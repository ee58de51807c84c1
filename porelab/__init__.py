"""porelab: voxel-wise pore segmentation in X-ray CT scans of additively manufactured parts.

Implements Iuso et al. (2024), "Voxel-wise segmentation for porosity investigation of additive
manufactured parts with 3D unsupervised and (deeply) supervised neural networks", as a library,
a command line (``porelab --help``) and an MLflow project (``mlflow run . -e search``).

Arrays are (z, y, x) everywhere; spacing is in millimetres, also (z, y, x).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
