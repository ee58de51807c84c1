"""Training sampling: TorchIO subjects, queues, samplers and augmentation.

Every scan is a TorchIO ``Subject`` (Iuso et al. 2024, §4.2; the public code's ``VolumetricDataLoader``); a
``Queue`` draws ``samples_per_volume`` patches per scan with a ``UniformSampler`` (unsupervised nets) or a
``LabelSampler`` that centres a fraction ``pore_ratio`` of the patches on pore voxels (supervised nets; pores
are < 1 % of the voxels, so uniform patches would almost never show one). Augmentation is applied to the whole
scan each time it enters the queue, never to validation data. Whole-scan inference is in ``porelab.inference``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from porelab.errors import ConfigError

IMAGE = "image"
LABEL = "label"


# --------------------------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------------------------
@dataclass
class AugmentConfig:
    """Probabilities and ranges of the training augmentation (Iuso et al. 2024, §4.2; paper code preset 4).

    One intensity transform (noise, blur, bias field for beam-hardening-like shading, gamma) is chosen with
    probability ``p_intensity``; one spatial transform (flip along random axes, elastic deformation) with
    probability ``p_spatial``. The weights within each group are the ``w_*`` fields.
    """

    enabled: bool = True
    p_intensity: float = 1.0
    p_spatial: float = 1.0
    w_noise: float = 0.3
    w_blur: float = 0.2
    w_bias: float = 0.3
    w_gamma: float = 0.2
    w_flip: float = 0.5
    w_elastic: float = 0.5
    noise_std: float = 0.08            # in normalised units (material = 0.8)
    blur_std: float = 1.0              # voxels
    bias_coefficients: float = 0.3
    log_gamma: float = 0.2
    elastic_control_points: int = 7
    elastic_max_displacement: float = 4.0   # voxels

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentConfig:
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        bad = set(d) - names
        if bad:
            raise ConfigError(f"unknown augmentation options {sorted(bad)}; known: {sorted(names)}")
        return cls(**d)


def _binarise_label(tensor):
    """Spatial transforms return float labels (and may interpolate): cast back to float {0, 1}."""
    import torch

    return (tensor > 0.5).to(torch.float32)


def _non_negative(tensor):
    """Gamma needs non-negative input and noise can push below 0: clamp intensities at 0."""
    return tensor.clamp(min=0.0)


def augmentation(config: AugmentConfig | dict | None = None):
    """TorchIO transform for training scans, or None when disabled.

    ``config`` is an ``AugmentConfig`` or a dict of its fields (a training config's ``augment``).
    """
    import torchio as tio

    if config is None:
        config = AugmentConfig()
    elif isinstance(config, dict):
        config = AugmentConfig.from_dict(config)
    elif not isinstance(config, AugmentConfig):
        raise ConfigError(f"augmentation: expected an AugmentConfig or a dict, got {type(config).__name__}")
    if not config.enabled:
        return None
    intensity = {
        tio.RandomNoise(std=(0.0, config.noise_std)): config.w_noise,
        tio.RandomBlur(std=(0.0, config.blur_std)): config.w_blur,
        tio.RandomBiasField(coefficients=config.bias_coefficients): config.w_bias,
        tio.RandomGamma(log_gamma=(-config.log_gamma, config.log_gamma)): config.w_gamma,
    }
    spatial = {
        tio.RandomFlip(axes=(0, 1, 2), flip_probability=1 / 3): config.w_flip,
        tio.RandomElasticDeformation(num_control_points=config.elastic_control_points,
                                     max_displacement=config.elastic_max_displacement,
                                     locked_borders=2): config.w_elastic,
    }
    intensity = {t: w for t, w in intensity.items() if w > 0}
    spatial = {t: w for t, w in spatial.items() if w > 0}
    parts = [tio.Lambda(_non_negative, types_to_apply=[tio.INTENSITY])]
    if intensity and config.p_intensity > 0:
        parts.append(tio.OneOf(intensity, p=config.p_intensity))
    if spatial and config.p_spatial > 0:
        parts.append(tio.OneOf(spatial, p=config.p_spatial))
    parts.append(tio.Lambda(_non_negative, types_to_apply=[tio.INTENSITY]))
    parts.append(tio.Lambda(_binarise_label, types_to_apply=[tio.LABEL]))
    return tio.Compose(parts)


# --------------------------------------------------------------------------------------------------------------
# subjects, queues, loaders
# --------------------------------------------------------------------------------------------------------------
def make_subjects(samples: Sequence, labels: Sequence | None = None) -> list:
    """One ``tio.Subject`` per scan, with ``image`` (ScalarImage) and, when present, ``label`` (LabelMap).

    ``samples`` are ``porelab.train.Sample`` objects (``scan``, ``label``, ``name``) or plain arrays; ``labels``
    (optional) overrides/gives the label arrays in the same order.
    """
    import torch
    import torchio as tio

    subjects = []
    for i, s in enumerate(samples):
        scan = getattr(s, "scan", s)
        label = labels[i] if labels is not None else getattr(s, "label", None)
        name = getattr(s, "name", None) or f"scan{i}"
        scan = np.ascontiguousarray(scan, dtype=np.float32)
        if scan.ndim != 3:
            raise ConfigError(f"sample {name!r}: a scan must be 3-D, got shape {scan.shape}")
        kw = {IMAGE: tio.ScalarImage(tensor=torch.from_numpy(scan)[None])}
        if label is not None:
            label = np.asarray(label)
            if label.shape != scan.shape:
                raise ConfigError(f"sample {name!r}: label shape {label.shape} differs from scan {scan.shape}")
            kw[LABEL] = tio.LabelMap(tensor=torch.from_numpy((label > 0).astype(np.float32))[None])
        subjects.append(tio.Subject(name=name, **kw))
    return subjects


def make_sampler(patch: int, *, supervised: bool, pore_ratio: float = 0.5):
    """``LabelSampler`` with {background: 1 − pore_ratio, pore: pore_ratio} for supervised nets, else uniform."""
    import torchio as tio

    if supervised:
        if not 0.0 <= pore_ratio <= 1.0:
            raise ConfigError(f"pore_ratio must be within [0, 1], got {pore_ratio}")
        return tio.LabelSampler(patch, label_name=LABEL, label_probabilities={0: 1.0 - pore_ratio, 1: pore_ratio})
    return tio.UniformSampler(patch)


def make_queue(subjects: list, *, patch: int, supervised: bool, samples_per_volume: int,
               max_length: int, pore_ratio: float = 0.5, transform=None, shuffle: bool = True):
    """TorchIO ``Queue`` over ``subjects`` (each transformed by ``transform`` when it enters the queue)."""
    import torchio as tio

    for s in subjects:
        if any(d < patch for d in s.spatial_shape):
            raise ConfigError(f"scan {s.get('name')!r} of shape {tuple(s.spatial_shape)} is smaller than "
                              f"the patch {patch}")
        if supervised and LABEL not in s:
            raise ConfigError(f"scan {s.get('name')!r} has no label; supervised nets need one")
    dataset = tio.SubjectsDataset(subjects, transform=transform)
    sampler = make_sampler(patch, supervised=supervised, pore_ratio=pore_ratio)
    # TorchIO's queue cannot hold fewer patches than one scan gives
    return tio.Queue(dataset, max_length=max(max_length, samples_per_volume, 1), samples_per_volume=samples_per_volume,
                     sampler=sampler, num_workers=0, shuffle_subjects=shuffle, shuffle_patches=shuffle,
                     start_background=False)


def make_loader(queue, batch_size: int):
    """``tio.SubjectsLoader`` over a queue (``num_workers=0``: the queue does the loading)."""
    import torchio as tio

    return tio.SubjectsLoader(queue, batch_size=batch_size, num_workers=0)


def batch_tensors(batch) -> tuple:
    """(image (B,1,p,p,p) float32, label (B,1,p,p,p) float {0,1} or None) from a loader batch."""
    import torchio as tio

    x = batch[IMAGE][tio.DATA].float()
    y = batch[LABEL][tio.DATA] if LABEL in batch else None
    if y is not None:
        y = (y > 0.5).float()
    return x, y


__all__ = [
    "IMAGE",
    "LABEL",
    "AugmentConfig",
    "augmentation",
    "batch_tensors",
    "make_loader",
    "make_queue",
    "make_sampler",
    "make_subjects",
]
