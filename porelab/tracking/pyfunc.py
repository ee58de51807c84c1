"""The registered pyfunc model: a saved :class:`porelab.model.PoreModel` folder inside an MLflow model.

``predict(float32 (Z, Y, X)) -> float32 (Z, Y, X)`` voxel scores (design note §3); the decision threshold
and the model config travel in the logged model's metadata. :func:`log_pore_model` logs one on the active
run, with the ``porelab`` package as its code path and the running versions as its requirements.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import warnings
from pathlib import Path

with warnings.catch_warnings():   # mlflow.pyfunc warns about type hints of its own classes on import
    warnings.simplefilter("ignore", UserWarning)
    import mlflow
    import mlflow.pyfunc

MODEL_ARTIFACT = "porelab_model"   # key of the PoreModel folder among the pyfunc artifacts
_PIP_PACKAGES = ("torch", "numpy", "scipy", "scikit-image", "torchio", "click", "tqdm", "matplotlib",
                 "scikit-learn", "tifffile", "SimpleITK")


# MLflow asks for type hints on predict() when a PythonModel subclass is made, under its own "once" filter
# that overrides an "ignore"; the signature is explicit (model_signature), so the note is recorded and
# dropped instead of printed on every import.
with warnings.catch_warnings(record=True):

    class PorePyfunc(mlflow.pyfunc.PythonModel):
        """The registered pyfunc model: a saved :class:`porelab.model.PoreModel` folder inside the artifact.

        ``predict(context, model_input)`` takes one scan (Z, Y, X) or (1, Z, Y, X) in the scanner's grey
        values (the model normalises it itself) — any real dtype (float32/64, int8-64, uint8-64, bool), nested
        lists as sent to ``mlflow models serve`` too — casts it to float32 and returns the float32 voxel score
        (Z, Y, X): a probability for supervised nets, the post-processed anomaly score A_pores for unsupervised
        nets (Iuso et al. 2024, eq. (2)-(3)). NaN/±inf voxels are missing data: the score is NaN exactly there
        (``porelab.model.PoreModel.predict``). The decision threshold is ``model.threshold`` and in the logged
        model's metadata. Anything else is refused with a one-line ``MlflowException`` (HTTP 400 when served).
        """

        def load_context(self, context):
            from porelab.model import PoreModel

            self.model = PoreModel.load(context.artifacts[MODEL_ARTIFACT])

        def predict(self, context, model_input, params=None):
            import numpy as np
            from mlflow.exceptions import MlflowException

            from porelab.errors import PorelabError

            scan = _pyfunc_scan(model_input)
            try:
                return np.asarray(self.model.predict(scan, progress=False), dtype=np.float32)
            except PorelabError as exc:
                raise MlflowException.invalid_parameter_value(str(exc)) from None


def _pyfunc_scan(model_input):
    """The pyfunc input as one float32 (Z, Y, X) scan, or a one-line ``MlflowException`` (HTTP 400).

    MLflow's own signature check is off for the input (see :func:`model_signature`): it would refuse every
    dtype but one and every shape of another rank with a long message, so the checks are made here.
    """
    import numpy as np
    from mlflow.exceptions import MlflowException

    if hasattr(model_input, "to_numpy") and not isinstance(model_input, np.ndarray):
        model_input = model_input.to_numpy()
    try:
        arr = np.asarray(model_input)
    except (TypeError, ValueError) as exc:
        raise MlflowException.invalid_parameter_value(
            f"expected one scan (Z, Y, X) of numbers, got {type(model_input).__name__}: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise MlflowException.invalid_parameter_value(
            f"expected one scan (Z, Y, X) of real numbers, got dtype {arr.dtype}")
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or min(arr.shape) == 0:
        raise MlflowException.invalid_parameter_value(
            f"expected one scan of shape (Z, Y, X) or (1, Z, Y, X), got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc environment (the versions this process runs with)."""
    reqs = []
    for pkg in _PIP_PACKAGES:
        try:
            version = importlib.metadata.version(pkg).split("+", 1)[0]
        except importlib.metadata.PackageNotFoundError:
            continue
        reqs.append(f"{pkg}=={version}")
    reqs.append(f"mlflow=={importlib.metadata.version('mlflow').split('+', 1)[0]}")
    return reqs


def model_signature():
    """Signature of the pyfunc: no input schema, a float32 (-1, -1, -1) tensor out.

    The input is left without a schema on purpose: MLflow enforces a ``TensorSpec`` exactly (one dtype, one
    rank), so a float32 (Z, Y, X) spec refuses float64, int16, uint16 and (1, Z, Y, X) scans that
    ``porelab segment`` reads. :class:`PorePyfunc` checks and casts the input itself (``_pyfunc_scan``).
    """
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype("float32"), (-1, -1, -1))]))


def package_dir() -> str:
    """The folder of the ``porelab`` package (logged as the pyfunc's code path)."""
    import porelab

    return str(Path(porelab.__file__).resolve().parent)


def log_pore_model(model_dir: str | os.PathLike, *, name: str = "model", registered_name: str | None = None,
                   metadata: dict | None = None, python_model=None):
    """Log a saved PoreModel folder as a pyfunc model on the active run; optionally register it.

    Returns MLflow's ``ModelInfo`` (``registered_model_version`` set when registered).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model if python_model is not None else PorePyfunc(),
            artifacts={MODEL_ARTIFACT: str(model_dir)},
            code_paths=[package_dir()],
            signature=model_signature(),
            pip_requirements=pip_requirements(),
            metadata=_jsonable(metadata or {}),
            registered_model_name=registered_name,
            await_registration_for=60,
        )


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


__all__ = ["MODEL_ARTIFACT", "PorePyfunc", "log_pore_model", "model_signature", "package_dir",
           "pip_requirements"]
