"""``PoreModel``: everything needed to score a new scan, saved as one folder.

A model folder holds ``model.json`` (net name and constructor arguments, normalisation, patch, overlap,
blending, kind, post-processing settings, decision threshold, free ``meta``) and ``weights.pt`` (the net's
``state_dict``, or a list of them: a *fold ensemble*, the nnU-Net convention, :meth:`PoreModel.ensemble`). ``PoreModel.predict`` runs the whole path of the design note: normalise → patches → net →
aggregate → (unsupervised) anomaly score ``|x − x̂|`` (or its dark side) and surface compensation (Iuso et
al. 2024, eq. (2)-(3)) → (both kinds) skin suppression (``porelab.postprocess.interior_mask``).

>>> model = PoreModel.load("models/unet")            # doctest: +SKIP
>>> score, mask = model.segment(scan)                 # float32 score, bool mask (score >= threshold)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from porelab.errors import ConfigError, ModelError
from porelab.normalise import Normalisation, fill_nonfinite

FORMAT = "porelab-model/1"
MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"


@dataclass
class PoreModel:
    """A trained network plus its normalisation, inference settings and decision threshold.

    Parameters
    ----------
    name : str
        Network name (``porelab.nets.NAMES``).
    net_kwargs : dict
        ``porelab.nets.build(name, **net_kwargs)`` rebuilds the architecture (``scale``, ``patch_size`` …).
    state_dict : dict or list of dict
        The trained weights (tensors on the CPU). A list makes the model an ensemble of nets of one
        architecture (:meth:`ensemble`): every patch goes through each and their outputs are averaged — the
        mean probability (supervised) or the mean reconstruction (unsupervised, whose anomaly score and
        post-processing then follow as for one net).
    normalisation : Normalisation
        Re-fitted on every scored scan when ``normalisation.per_scan`` (default).
    patch : int
        Inference patch edge (voxels).
    postprocess : bool
        Unsupervised nets: apply the surface compensation (eq. (2)-(3)) to the anomaly score.
    residual : {"abs", "dark"}
        Unsupervised nets: the anomaly score ``|x − x̂|`` (the paper's) or the one-sided ``max(0, x̂ − x)``
        (pores are darker than the metal; ``porelab.postprocess.anomaly_map``).
    smooth : float
        Unsupervised nets: σ (voxels) of the Gaussian pre-filter of the scan in the residual (0 = none;
        ``from_trained`` uses ``porelab.postprocess.DEFAULT_SMOOTH``).
    skin : int
        Both kinds: the score is 0 within ``skin`` voxels of the part's surface
        (``porelab.postprocess.interior_mask``; 0 = scored everywhere; ``from_trained`` uses ``DEFAULT_SKIN``).
    threshold : float
        Decision threshold on the score (``mask = score >= threshold``).
    meta : dict
        Free JSON-able metadata (metrics, profile, dataset hash, threshold policy …).
    overlap, weighting, batch_size : inference grid settings (see ``porelab.patches.predict_volume``).
    """

    name: str
    net_kwargs: dict
    state_dict: dict | list
    normalisation: Normalisation
    patch: int
    postprocess: bool = True
    threshold: float = 0.5
    meta: dict = field(default_factory=dict)
    overlap: float = 0.5
    weighting: str = "average"
    batch_size: int = 4
    residual: str = "abs"
    smooth: float = 0.0
    skin: int = 0

    def __post_init__(self):
        from porelab.nets import check_name
        from porelab.postprocess import RESIDUALS

        check_name(self.name)
        if self.residual not in RESIDUALS:
            raise ModelError(f"model {self.name!r}: residual must be one of {RESIDUALS}, got {self.residual!r}")
        if not (self.smooth >= 0 and self.skin >= 0):
            raise ModelError(f"model {self.name!r}: smooth and skin must be >= 0, got {self.smooth!r}, {self.skin!r}")
        if isinstance(self.state_dict, list) and not self.state_dict:
            raise ModelError(f"model {self.name!r}: an ensemble needs at least one member")
        self._net = None
        self._device = None

    @property
    def members(self) -> int:
        """Nets averaged by this model (1 unless it is an ensemble)."""
        return len(self.state_dict) if isinstance(self.state_dict, list) else 1

    @classmethod
    def ensemble(cls, models: list[PoreModel], *, threshold: float | None = None, meta: dict | None = None) -> PoreModel:
        """One model averaging ``models`` (the fold models of one configuration: same net, constructor
        arguments and patch). Normalisation, residual, smoothing, skin and inference settings come from the
        first; ``threshold`` defaults to the first's too (choose one for the ensemble's own score)."""
        if not models:
            raise ConfigError("an ensemble needs at least one model")
        first = models[0]
        for m in models[1:]:
            if (m.name, m.net_kwargs, m.patch) != (first.name, first.net_kwargs, first.patch):
                raise ConfigError(f"ensemble members must share net, arguments and patch: {first.name} "
                                  f"{first.net_kwargs} {first.patch} vs {m.name} {m.net_kwargs} {m.patch}")
        states = []
        for m in models:
            states += m.state_dict if isinstance(m.state_dict, list) else [m.state_dict]
        return dataclasses.replace(first, state_dict=states, meta=dict(meta if meta is not None else first.meta),
                                   threshold=float(first.threshold if threshold is None else threshold))

    # ---------------------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """"supervised" or "unsupervised"."""
        from porelab.nets import is_supervised

        return "supervised" if is_supervised(self.name) else "unsupervised"

    @classmethod
    def from_trained(cls, net, name: str, normalisation: Normalisation, profile=None, *, net_kwargs=None,
                     patch: int | None = None, threshold: float = 0.5, postprocess: bool = True,
                     meta: dict | None = None, **kwargs) -> PoreModel:
        """Wrap a trained net. ``net_kwargs`` default to ``{"scale": net.scale}`` (+ ``patch_size`` for VAEs);
        ``patch`` defaults to the profile's (or the net's ``patch_size``). ``skin`` and (unsupervised)
        ``smooth`` default to the profile's ``skin`` / ``smooth`` (without a profile: porelab's defaults)."""
        from porelab.config import get_profile
        from porelab.nets import is_supervised
        from porelab.postprocess import DEFAULT_SKIN, DEFAULT_SMOOTH

        if isinstance(profile, str):
            profile = get_profile(profile)
        if net_kwargs is None:
            net_kwargs = {}
            for attr in ("scale", "patch_size"):
                if hasattr(net, attr):
                    net_kwargs[attr] = getattr(net, attr)
            if "scale" not in net_kwargs and profile is not None:
                net_kwargs["scale"] = profile.net_scale
        if patch is None:
            patch = getattr(net, "patch_size", None) or (profile.patch if profile is not None else None)
        if patch is None:
            raise ConfigError("from_trained: give patch= (no profile and the net has no patch_size)")
        meta = dict(meta or {})
        if profile is not None:
            meta.setdefault("profile", profile.name)
        kwargs.setdefault("skin", int(profile.skin if profile is not None else DEFAULT_SKIN))
        if not is_supervised(name):
            kwargs.setdefault("smooth", float(profile.smooth if profile is not None else DEFAULT_SMOOTH))
        state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        model = cls(name=name, net_kwargs=dict(net_kwargs), state_dict=state, normalisation=normalisation,
                    patch=int(patch), threshold=float(threshold), postprocess=bool(postprocess), meta=meta,
                    **kwargs)
        return model

    # ---------------------------------------------------------------------------------------------------------
    def net(self, device=None):
        """The network, built once, weights loaded, in eval mode, on ``device`` (default: automatic); an
        ensemble's first member (:meth:`nets` gives them all)."""
        return self.nets(device)[0]

    def nets(self, device=None) -> list:
        """Every member network (one unless an ensemble), built once, in eval mode, on ``device``."""
        from porelab.nets import build
        from porelab.runtime import get_device

        device = get_device(device) if not hasattr(device, "type") else device
        if self._net is None or self._device != device:
            states = self.state_dict if isinstance(self.state_dict, list) else [self.state_dict]
            nets = []
            for i, state in enumerate(states):
                try:
                    net = build(self.name, **self.net_kwargs)
                    net.load_state_dict(state)
                except (RuntimeError, TypeError, KeyError, AttributeError) as exc:
                    which = f" (ensemble member {i})" if len(states) > 1 else ""
                    raise ModelError(f"model {self.name!r}: weights{which} do not fit the architecture "
                                     f"{self.net_kwargs}: {str(exc).splitlines()[0]}") from None
                nets.append(net.to(device).eval())
            self._net, self._device = nets, device
        return self._net

    def patch_fn(self, norm: Normalisation, device):
        """``fn(raw patches) -> net output`` for ``porelab.patches.predict_volume``: normalises each patch with
        ``norm`` and returns the probability (supervised) or the deterministic reconstruction (unsupervised)."""
        return self._patch_fn(norm, device)

    def reconstruct(self, scan: np.ndarray, progress: bool = False, *, device=None) -> np.ndarray:
        """Unsupervised nets: the reassembled deterministic reconstruction x̂ of ``scan`` (normalised units),
        the input of ``anomaly_map`` and ``surface_compensation``; NaN at the scan's missing voxels."""
        filled, missing, _ = fill_nonfinite(scan)
        x_hat = self._reconstruct(filled, self.normalisation.refit(scan), device, progress)
        return _mark_missing(x_hat, missing)

    def _reconstruct(self, filled: np.ndarray, norm: Normalisation, device, progress: bool, **kw) -> np.ndarray:
        from porelab.inference import predict_volume
        from porelab.runtime import get_device

        if self.kind != "unsupervised":
            raise ConfigError(f"{self.name} is supervised: it has no reconstruction")
        device = get_device(device) if not hasattr(device, "type") else device
        fn = self._patch_fn(norm, device)
        return predict_volume(fn, filled, patch=self.patch, overlap=self.overlap, batch_size=self.batch_size,
                              weighting=self.weighting, progress=progress, device=device,
                              desc=f"{self.name} reconstruction", **kw)

    def unsupervised_scores(self, scan: np.ndarray, residuals=None, *, progress: bool = False,
                            device=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{residual: (A, A_pores)}`` of an unsupervised net from one reconstruction: the anomaly score
        without and with the post-processing (``porelab.postprocess.unsupervised_score``), for each residual
        mode (default: the model's own). ``A_pores`` is what :meth:`predict` returns with that residual.
        Missing (non-finite) voxels are NaN in both, as in :meth:`predict`."""
        from porelab.postprocess import interior_mask, unsupervised_score

        filled, missing, _ = fill_nonfinite(scan)
        norm = self.normalisation.refit(scan)
        x_hat = self._reconstruct(filled, norm, device, progress)
        x = norm.apply(filled)
        keep = interior_mask(filled, self.skin)
        out = {}
        for mode in (residuals or (self.residual,)):
            a, pp = unsupervised_score(x, x_hat, residual=mode, smooth=self.smooth, postprocess=self.postprocess,
                                       keep=keep)
            out[mode] = (_mark_missing(a, missing), _mark_missing(pp, missing))
        return out

    def _patch_fn(self, norm: Normalisation, device):
        from porelab.inference import cached_inference_net

        # the same function as the eager net, faster on the CPU (checked on a patch; falls back to eager)
        method = "forward" if self.kind == "supervised" else "reconstruct"
        nets = [cached_inference_net(n, device, patch=self.patch, method=method) for n in self.nets(device)]

        def one(net, xn):
            if self.kind == "supervised":
                y = net(xn)
                return y[0] if isinstance(y, (list, tuple)) else y
            if hasattr(net, "reconstruct"):
                return net.reconstruct(xn)
            return net(xn)["recon"]

        def fn(x):
            xn = norm.apply_torch(x)
            out = one(nets[0], xn)
            for net in nets[1:]:                  # an ensemble: the mean output of its members
                out = out + one(net, xn)
            return out / len(nets) if len(nets) > 1 else out

        # predict_volume frees the inference copies' padded-input buffers after each scan (re-made on next use)
        def release_buffers():
            for net in nets:
                getattr(net, "release_buffers", lambda: None)()

        fn.release_buffers = release_buffers
        return fn

    def predict(self, scan: np.ndarray, progress: bool = False, *, out: np.ndarray | None = None,
                device=None, return_info: bool = False):
        """Voxel score of ``scan`` (float32, (Z, Y, X)); higher = more likely pore.

        Supervised nets: the aggregated probability. Unsupervised nets: ``A = |x − x̂|`` (``residual="abs"``)
        or ``max(0, x̂ − x)`` (``"dark"``) on the normalised scan, then (``postprocess``) ``A_pores = max(0, A − λ* G_σ*(D))`` (Iuso et al. 2024, eq. (2)-(3)).
        ``out`` (e.g. an ``np.memmap``) receives the score of supervised nets without a full-volume copy.
        With ``return_info`` a dict (normalisation levels, λ*, σ*, ``nonfinite_voxels``) is returned too.

        NaN/±inf voxels of ``scan`` are missing data: they are filled from their finite neighbours
        (``porelab.normalise.fill_nonfinite``) before the normalisation, the net, the surface compensation
        and the skin's object mask see the scan, and the score is NaN exactly there (so ``score >= t`` is
        False: no pore is reported at a missing voxel). Their count is ``info["nonfinite_voxels"]``. A scan
        without any finite voxel raises ``ScanError``.
        """
        from porelab.inference import predict_volume
        from porelab.runtime import get_device

        if np.ndim(scan) != 3:
            raise ConfigError(f"predict needs a 3-D scan (z, y, x), got shape {np.shape(scan)}")
        device = get_device(device) if not hasattr(device, "type") else device
        # the levels come from the finite voxels only (Normalisation.fit skips the others); every later step
        # sees the filled scan, and the missing voxels get a NaN score at the end
        filled, missing, n_missing = fill_nonfinite(scan)
        norm = self.normalisation.refit(scan)
        scan = filled
        info = {"air": norm.air, "material": norm.material}
        if self.kind == "supervised":
            from porelab.postprocess import apply_skin, interior_mask

            fn = self._patch_fn(norm, device)
            score = predict_volume(fn, scan, out=out, patch=self.patch, overlap=self.overlap,
                                   batch_size=self.batch_size, weighting=self.weighting, progress=progress,
                                   device=device, desc=f"{self.name} inference")
            apply_skin(score, interior_mask(scan, self.skin))
        else:
            from porelab.postprocess import interior_mask, unsupervised_score

            x_hat = self._reconstruct(scan, norm, device, progress)
            _, score, pp_info = unsupervised_score(norm.apply(scan), x_hat, residual=self.residual,
                                                   smooth=self.smooth, postprocess=self.postprocess,
                                                   keep=interior_mask(scan, self.skin), keep_raw=False,
                                                   return_info=True)
            info.update(pp_info)
            del x_hat
            if out is not None:
                out[...] = score
                score = out
        info["skin"] = self.skin
        info["nonfinite_voxels"] = n_missing
        score = _mark_missing(score, missing)
        return (score, info) if return_info else score

    def segment(self, scan: np.ndarray, progress: bool = False, *, threshold: float | None = None):
        """``(score, mask)``: the score and ``score >= threshold`` (the model's own unless given)."""
        score = self.predict(scan, progress=progress)
        thr = self.threshold if threshold is None else float(threshold)
        return score, score >= thr

    # ---------------------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """The JSON part of a saved model."""
        return {"format": FORMAT, "name": self.name, "kind": self.kind, "net_kwargs": self.net_kwargs,
                "normalisation": self.normalisation.to_dict(), "patch": self.patch, "overlap": self.overlap,
                "weighting": self.weighting, "batch_size": self.batch_size, "postprocess": self.postprocess,
                "residual": self.residual, "smooth": self.smooth, "skin": self.skin,
                "threshold": self.threshold, "members": self.members, "meta": self.meta}

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/model.json`` and ``directory/weights.pt`` atomically (all or nothing)."""
        import torch

        from porelab.io.atomic import _json_default, atomic_path

        directory = Path(directory)
        with atomic_path(directory, is_dir=True) as tmp:
            tmp.mkdir(exist_ok=True)
            torch.save(self.state_dict, tmp / WEIGHTS)
            (tmp / MODEL_JSON).write_text(json.dumps(self.config(), indent=2, default=_json_default) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> PoreModel:
        """Read a folder written by ``save``; any problem is a one-line ``ModelError`` naming the folder."""
        import torch

        directory = Path(directory)
        if not directory.is_dir():
            raise ModelError(f"model folder not found: {directory}")
        cfg_path, w_path = directory / MODEL_JSON, directory / WEIGHTS
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise ModelError(f"{directory}: not a porelab model folder (missing {p.name})")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{cfg_path}: unreadable model description ({exc})") from None
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            raise ModelError(f"{cfg_path}: not a {FORMAT} description")
        try:
            state = torch.load(w_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a corrupt file
            raise ModelError(f"{w_path}: unreadable weights ({type(exc).__name__})") from None
        try:
            model = cls(name=cfg["name"], net_kwargs=dict(cfg["net_kwargs"]), state_dict=state,
                        normalisation=Normalisation.from_dict(cfg["normalisation"]), patch=int(cfg["patch"]),
                        postprocess=bool(cfg.get("postprocess", True)), threshold=float(cfg["threshold"]),
                        meta=dict(cfg.get("meta") or {}), overlap=float(cfg.get("overlap", 0.5)),
                        weighting=str(cfg.get("weighting", "average")), batch_size=int(cfg.get("batch_size", 4)),
                        residual=str(cfg.get("residual", "abs")), smooth=float(cfg.get("smooth", 0.0)),
                        skin=int(cfg.get("skin", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{cfg_path}: invalid model description ({type(exc).__name__}: {exc})") from None
        if isinstance(state, list) and len(state) != int(cfg.get("members", len(state))):
            raise ModelError(f"{w_path}: {len(state)} nets, the description says {cfg.get('members')}")
        model.nets("cpu")  # fail now, with a clear message, if the weights do not fit
        model._net = None
        return model

    def replace(self, **changes) -> PoreModel:
        return dataclasses.replace(self, **changes)


def _mark_missing(score: np.ndarray, missing: np.ndarray | None) -> np.ndarray:
    """``score`` with NaN at the ``missing`` voxels, in place, slab by slab (memmaps too)."""
    if missing is not None:
        from porelab.io import iter_slabs

        for sl in iter_slabs(score.shape):
            block = missing[sl]
            if block.any():
                score[sl][block] = np.nan
    return score


#: percentile of the score inside the object used when no labels exist (unsupervised nets)
UNLABELLED_PERCENTILE = 99.0


def choose_threshold(score: np.ndarray, truth: np.ndarray | None = None, *, kind: str = "supervised",
                     object_mask: np.ndarray | None = None) -> tuple[float, str]:
    """Decision threshold and the policy that gave it (design note §6: an explicit, logged policy).

    * labels given: the F1-optimal threshold on ``score`` against ``truth`` (``porelab.metrics``);
    * no labels, supervised: 0.5 (the nets output probabilities);
    * no labels, unsupervised: the ``UNLABELLED_PERCENTILE``-th percentile of the score inside
      ``object_mask`` (or the whole scan).
    """
    score = np.asarray(score)
    # missing voxels (a NaN score, see PoreModel.predict) take no part in choosing the threshold
    finite = np.isfinite(score)
    known = finite if object_mask is None else finite & np.asarray(object_mask, bool)
    if truth is not None and np.any(truth):
        from porelab.metrics import best_f1_threshold

        thr = best_f1_threshold(score, np.asarray(truth) > 0, mask=None if known.all() else known)
        thr = thr[0] if isinstance(thr, tuple) else thr
        return float(thr), "f1-optimal on labelled validation scan"
    if kind == "supervised":
        return 0.5, "probability 0.5 (no labels)"
    values = score[known]
    if values.size == 0:
        raise ConfigError("cannot choose a threshold: no finite score inside the object")
    return float(np.percentile(values, UNLABELLED_PERCENTILE)), f"{UNLABELLED_PERCENTILE:g}th percentile in object"


__all__ = ["FORMAT", "UNLABELLED_PERCENTILE", "PoreModel", "choose_threshold"]
