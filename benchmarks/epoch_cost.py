"""Seconds per training epoch of one net on fold 0 of a dataset, under training-setting overrides.

Trains ``--net`` for ``--epochs`` epochs on every cv scan but the first (the first validates), with the
profile's training settings except the patches per scan (``--patches``) and the weight of the elastic
deformation (``--elastic``); supervised nets train on Algorithm 1 labels. Prints JSON: every epoch's seconds
and their median.

    python benchmarks/epoch_cost.py --data porelab-data/quick --net unet --elastic 0.5
    python benchmarks/epoch_cost.py --data porelab-data/quick --net vae --elastic 0 --patches 16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder with manifest.json")
    ap.add_argument("--net", default="unet")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--patches", type=int, default=None, help="patches per scan and epoch (default: profile's)")
    ap.add_argument("--elastic", type=float, default=None, help="elastic deformation weight (default: profile's)")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args(argv)

    from porelab.crossval import default_net_kwargs, make_context, train_fold
    from porelab.nets import is_supervised
    from porelab.runtime import configure_threads

    configure_threads()
    ctx = make_context(args.profile, args.data, 0)
    sup = is_supervised(args.net)
    config = ctx.profile.train_config(args.net)
    augment = dataclasses.asdict(config.augment)
    if args.elastic is not None:
        augment["w_elastic"] = args.elastic
    overrides = {"max_epochs": args.epochs, "augment": augment,
                 "samples_per_volume": args.patches or config.samples_per_volume}
    seconds: list[float] = []
    train_fold(ctx, args.net, default_net_kwargs(ctx.profile, args.net),
               {"alpha": 0.633, "beta": 0.1, "gamma": 1.0} if sup else {}, 0,
               labels={s.name: s.alg1 for s in ctx.cv} if sup else None, seed=1,
               on_epoch=lambda _e, losses: seconds.append(float(losses["seconds"])), overrides=overrides)
    result = {"net": args.net, "profile": args.profile, "patches_per_scan": overrides["samples_per_volume"],
              "elastic_weight": augment["w_elastic"], "epoch_seconds": [round(s, 2) for s in seconds],
              "median_seconds": round(statistics.median(seconds), 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
