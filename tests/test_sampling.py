"""TorchIO queues and samplers, augmentation (porelab.sampling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from porelab.errors import ConfigError
from porelab.sampling import (
    AugmentConfig,
    augmentation,
    batch_tensors,
    make_loader,
    make_queue,
    make_subjects,
)
from porelab.train import Sample


def _toy(seed, shape=(40, 40, 40), n_pores=6):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    label = np.zeros(shape, bool)
    for _ in range(n_pores):
        c = rng.uniform(8, np.array(shape) - 8)
        label |= ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= 4
    scan = np.where(label, 0.1, 0.8).astype(np.float32) + rng.normal(0, 0.03, shape).astype(np.float32)
    return Sample(scan, label.astype(np.uint8), f"toy{seed}")


@pytest.mark.parametrize("ratio", [0.2, 0.7])
def test_label_sampler_pore_centred_fraction(ratio):
    import torchio as tio

    torch.manual_seed(0)
    samples = [_toy(1), _toy(2)]
    patch, spv = 16, 150
    queue = make_queue(make_subjects(samples), patch=patch, supervised=True, samples_per_volume=spv,
                       max_length=300, pore_ratio=ratio)
    centred, n = 0, 0
    for batch in make_loader(queue, 10):
        x, y = batch_tensors(batch)
        assert x.shape[1:] == (1, patch, patch, patch) and y.shape == x.shape
        assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
        names = batch["name"]
        for i, loc in enumerate(batch[tio.LOCATION]):
            c = loc[:3].numpy() + patch // 2
            label = samples[0 if names[i] == "toy1" else 1].label
            centred += int(label[tuple(c)])
            n += 1
        # the patch really is the scan at that location
        loc0 = batch[tio.LOCATION][0][:3].numpy()
        scan0 = samples[0 if names[0] == "toy1" else 1].scan
        np.testing.assert_array_equal(x[0, 0].numpy(), scan0[loc0[0]:loc0[0] + patch, loc0[1]:loc0[1] + patch,
                                                              loc0[2]:loc0[2] + patch])
    assert n == 2 * spv
    pore_fraction = float(np.mean([s.label.mean() for s in samples]))
    assert pore_fraction < 0.05
    assert abs(centred / n - ratio) < 0.1


def test_uniform_queue_without_labels():
    samples = [Sample(_toy(3).scan, None, "a")]
    queue = make_queue(make_subjects(samples), patch=16, supervised=False, samples_per_volume=8, max_length=8)
    batches = [batch_tensors(b) for b in make_loader(queue, 4)]
    assert len(batches) == 2
    for x, y in batches:
        assert x.shape == (4, 1, 16, 16, 16) and y is None
    with pytest.raises(ConfigError, match="label"):
        make_queue(make_subjects(samples), patch=16, supervised=True, samples_per_volume=8, max_length=8)
    with pytest.raises(ConfigError, match="smaller than the patch"):
        make_queue(make_subjects(samples), patch=48, supervised=False, samples_per_volume=8, max_length=8)


def test_augmentation_keeps_binary_labels_and_shape():
    import torchio as tio

    torch.manual_seed(0)
    s = _toy(4)
    subject = make_subjects([s])[0]
    spatial_only = augmentation(AugmentConfig(p_intensity=0.0, w_flip=0.0, elastic_max_displacement=3.0))
    out = spatial_only(subject)
    lab = out["label"][tio.DATA]
    assert lab.shape == (1, *s.scan.shape) and lab.dtype == torch.float32
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0}
    assert not torch.equal(out["image"][tio.DATA], subject["image"][tio.DATA])  # it did deform
    full = augmentation(AugmentConfig())
    for _ in range(3):
        o = full(subject)
        assert set(torch.unique(o["label"][tio.DATA]).tolist()) <= {0.0, 1.0}
        assert float(o["image"][tio.DATA].min()) >= 0.0
    assert augmentation(AugmentConfig(enabled=False)) is None
    with pytest.raises(ConfigError):
        AugmentConfig.from_dict({"p_flop": 1})
