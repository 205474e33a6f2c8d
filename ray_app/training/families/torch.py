"""The torch families on Ray Train: a ``TorchTrainer`` whose workers run the family's epoch
loop (``TorchFamily.train_loop``) on their shard of the training rows, checkpointing every
epoch, so an interrupted run resumes where it stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray_app.core.settings import Settings
from ray_app.models.families import Arrays, FitResult, ModelSpec, get
from ray_app.models.families._torch import TorchFamily, TorchParams
from ray_app.training.train import RaySession, fit_config, load_state, results_path, use_gpu


def _family(kind: str) -> TorchFamily:
    family = get(kind)
    assert isinstance(family, TorchFamily), f"{kind} is not a torch family"
    return family


def worker_loop(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker."""
    import ray
    import ray.train

    family = _family(config["kind"])
    params = TorchParams(**config["hparams"])
    session = RaySession(ray.train, distributed=True)
    family.train_loop(ray.get(config["arrays_ref"]), params, config["fit"], session)


def make_trainer(settings: Settings, model: ModelSpec, arrays_ref: Any, name: str) -> Any:
    """The trainer factory: a TorchTrainer running the family's loop on the configured workers."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = settings.train
    config = {
        "kind": model.kind,
        "hparams": model.hparams.model_dump(),
        "fit": fit_config(settings),
        "arrays_ref": arrays_ref,
    }
    return TorchTrainer(
        worker_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=use_gpu(settings),
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=results_path(settings),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )


def fit(
    settings: Settings, model: ModelSpec, arrays: Arrays, columns: list[str], name: str
) -> FitResult:
    import ray

    result = make_trainer(settings, model, ray.put(arrays), name).fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        return TorchFamily.result(load_state(Path(folder)))
