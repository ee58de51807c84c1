"""Search spaces and the registry on a resumed study (one version per trial)."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from porelab.automl.spaces import (
    PAPER_FTL_OPTIMUM,
    first_trial,
    get_space,
)
from porelab.config import get_profile
from porelab.errors import ConfigError


def test_spaces_by_name_and_the_profile_options_they_use():
    import optuna

    quick = get_profile("quick")
    # width = net_scale × the net's step-time width (unet3p: 0.25) × the searched multiplier
    trial = optuna.trial.FixedTrial({"net": "unet3p", "alpha": 0.6, "beta": 0.2, "gamma": 1.5, "width": 0.5,
                                     "lr": 1e-3})
    name, kwargs, loss = get_space("supervised")(trial, quick)
    assert name == "unet3p" and kwargs == {"scale": 0.25 * 0.25 * 0.5, "dropout": 0.0}
    assert loss == {"alpha": 0.6, "beta": 0.2, "gamma": 1.5} and trial.params["lr"] == 1e-3
    trial = optuna.trial.FixedTrial({"net": "vae", "width": 1.0, "lr": 5e-4, "vae_latent_channels": 512,
                                     "vae_kl_weight": 1e-5})
    name, kwargs, loss = get_space("unsupervised")(trial, quick)
    assert name == "vae" and kwargs["patch_size"] == 32 and kwargs["scale"] == 0.25 and loss == {"kl_weight": 1e-5}
    assert kwargs["channel_depths"][-1] == 512
    # a new TPE study starts from a configuration known to learn: the supervised one from the paper's optimum
    assert first_trial("supervised", quick) == {"net": "unet", "width": 1.0, "lr": 1e-3, **PAPER_FTL_OPTIMUM}
    assert first_trial("unsupervised", quick)["vae_kl_weight"] == 1e-5
    with pytest.raises(ConfigError, match="available: unsupervised, supervised"):
        get_space("semi")


def test_register_best_on_a_resumed_study_keeps_one_version_per_trial(mlflow_env, tmp_path):
    """A study registered, resumed with a better trial, registered again (twice): versions 1 and 2, one per
    trial, the newer one in Production."""
    import optuna

    from porelab import tracking
    from porelab.automl.pipeline import register_best
    from porelab.model import PoreModel
    from porelab.nets import build
    from porelab.normalise import Normalisation

    tracking.setup_mlflow()
    raw = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    PoreModel.from_trained(build("vae", scale=0.125, patch_size=16), "vae", Normalisation.fit(raw), "smoke",
                           patch=16).save(tmp_path / "m")
    storage = mlflow_env["optuna_storage"]
    ctx = type("Ctx", (), {"profile": get_profile("smoke"), "seed": 0})()

    def add_trial(value):
        study = optuna.create_study(study_name="s", storage=storage, direction="maximize", load_if_exists=True)
        with mlflow.start_run() as run:
            pass
        trial = study.ask()
        trial.suggest_float("kl", 1e-6, 1e-3, log=True)
        for k, v in {"mlflow_run_id": run.info.run_id, "model_dir": str(tmp_path / "m"), "net": "vae",
                     "fold_metrics": [{"val_ap_pp_inj": value}]}.items():
            trial.set_user_attr(k, v)
        study.tell(trial, value)
        return study, run.info.run_id

    study, first_run = add_trial(0.5)
    with mlflow.start_run():
        first = register_best(study, "porelab-unsupervised", ctx)
    study, second_run = add_trial(0.7)                        # the resumed study's new, better trial
    results = []
    for _ in range(2):
        with mlflow.start_run():
            results.append(register_best(optuna.load_study(study_name="s", storage=storage),
                                         "porelab-unsupervised", ctx))
    assert (first["version"], first["reused"]) == ("1", False)
    assert [(r["version"], r["reused"], r["stage"]) for r in results] == [("2", False, "Production"),
                                                                          ("2", True, "Production")]
    client = mlflow.MlflowClient()
    versions = [client.get_model_version("porelab-unsupervised", v) for v in ("1", "2")]
    assert [v.tags["porelab.trial_run"] for v in versions] == [first_run, second_run]
    assert [v.current_stage for v in versions] == ["Archived", "Production"]
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version("porelab-unsupervised", "3")
