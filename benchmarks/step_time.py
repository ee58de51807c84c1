"""Seconds per training step (forward, loss, backward, Adam) of every net at a profile's patch and batch.

Used to give every net of the search space a width at which one training step costs about the same
(``porelab.config`` quick profile, ``SearchSpace.net_widths``). Prints one JSON line per (net, width).

    python benchmarks/step_time.py --profile quick --widths 0.25 0.5 1.0 --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def step_seconds(name: str, width: float, profile, steps: int, threads: int) -> dict:
    import torch

    from porelab.crossval import default_net_kwargs
    from porelab.losses import build_loss
    from porelab.nets import build, is_supervised

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = profile.train_config(name)
    kwargs = default_net_kwargs(profile, name, scale=profile.net_scale * width)
    net = build(name, **kwargs)
    net.train()
    loss_fn = build_loss(name)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(cfg.batch_size, 1, cfg.patch, cfg.patch, cfg.patch)
    y = (torch.rand_like(x) > 0.95).float()
    times = []
    for i in range(steps + 2):                     # two warm-up steps
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_fn(net(x), y if is_supervised(name) else x)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in net.parameters())
    return {"net": name, "width": width, "scale": kwargs["scale"], "params": params,
            "step_s": round(statistics.median(times), 4), "patch": cfg.patch, "batch": cfg.batch_size,
            "threads": threads}


def main() -> None:
    from porelab.config import get_profile
    from porelab.nets import NAMES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--nets", nargs="*", default=list(NAMES))
    ap.add_argument("--widths", nargs="*", type=float, default=[0.25, 0.5, 1.0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    prof = get_profile(args.profile)
    for name in args.nets:
        for w in args.widths:
            print(json.dumps(step_seconds(name, w, prof, args.steps, args.threads)), flush=True)


if __name__ == "__main__":
    main()
