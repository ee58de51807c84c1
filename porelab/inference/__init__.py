"""Whole-scan inference: streaming half-overlap grid inference (``grid``) and the faster CPU forward (``fast``).

``predict_volume(fn, scan, patch=…)`` runs a patch function over a scan and blends the overlapping outputs;
``cached_inference_net(net, device, patch=…)`` gives the inference copy of a net that ``PoreModel`` uses as that
patch function (the same outputs within float32 rounding, checked on a patch).
"""

from porelab.inference.fast import (
    BlockConvTranspose3d,
    InferenceNet,
    PointwiseConv3d,
    ReplicateConv3d,
    Scratch,
    SingleChannelConv3d,
    avg_pool2,
    cached_inference_net,
    example_input,
    malloc_trim,
    optimize_for_inference,
    pad_replicate,
    rewrite_for_inference,
    upsample2_trilinear,
)
from porelab.inference.grid import grid_starts, predict_volume, predict_volume_torchio, window_1d

__all__ = [
    "BlockConvTranspose3d",
    "InferenceNet",
    "PointwiseConv3d",
    "ReplicateConv3d",
    "Scratch",
    "SingleChannelConv3d",
    "avg_pool2",
    "cached_inference_net",
    "example_input",
    "grid_starts",
    "malloc_trim",
    "optimize_for_inference",
    "pad_replicate",
    "predict_volume",
    "predict_volume_torchio",
    "rewrite_for_inference",
    "upsample2_trilinear",
    "window_1d",
]
