"""Experiment tracking: ``train.log_with = ["tensorboard", "mlflow"]`` through Accelerate's trackers.

Every epoch of every stage is logged by the main process as scalars whose names start with the
stage, so each stage is one section of the tracker's dashboard::

    distilled/loss/total  distilled/loss/kl_div  distilled/metric/top1  distilled/lr
    distilled/epoch_seconds  distilled/skipped_batches  distilled/scaler_skipped

The step is the epoch within the stage: the x axis is the epoch number used everywhere else in
kdengine (``metrics.jsonl``, the results table's ``top1 @N``, ``curves.png``), every stage's
curves start at 1 however long the stages before it were, and the scratch and distilled students
line up epoch for epoch. The resolved recipe, flattened to ``section.key`` scalars and strings,
is logged once as the run's hyperparameters.

Tracker files go to ``<run folder>/tracking/``: TensorBoard's event files in
``tracking/<run.name>/``, MLflow's file store in ``tracking/mlruns/`` (unless
``MLFLOW_TRACKING_URI`` names a tracking server or database of your own). A resumed run appends
to the same TensorBoard folder and reopens the same MLflow run; an epoch reaches the trackers only
after its training state is saved, so a resume never logs an epoch twice.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kdengine.errors import KDEngineError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from kdengine.recipe import Recipe
    from kdengine.io.results import EpochRecord
    from kdengine.io.rundir import RunFolder

#: The run folder's subfolder for tracker files.
TRACKING_DIR = "tracking"
#: What a run remembers about its trackers, for a resume (the MLflow run to reopen).
STATE_FILE = "trackers.json"
#: The pip package of each of Accelerate's trackers (the tracker's name where absent).
PIP_PACKAGES = {"mlflow": "mlflow-skinny", "comet_ml": "comet-ml"}
#: Trackers installed by ``pip install 'kdengine[tracking]'``.
EXTRA_TRACKERS = ("tensorboard", "mlflow")


def _installed(name: str) -> bool:
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    if name not in LoggerType.list():
        return True  # a tracker class registered in this process: nothing to import
    return LoggerType(name) in get_available_trackers()


def check_installed(names: Sequence[str]) -> None:
    """Stop before any training when a tracker's package is missing (Accelerate would quietly
    drop the tracker), naming what to install."""
    missing = [name for name in names if not _installed(name)]
    if not missing:
        return
    packages = " ".join(PIP_PACKAGES.get(name, name) for name in missing)
    extra = " (or pip install 'kdengine[tracking]')" if all(m in EXTRA_TRACKERS for m in missing) else ""
    trackers = ", ".join(f"'{name}'" for name in missing)
    raise KDEngineError(f"train.log_with: {trackers} needs a package that is not installed: "
                        f"pip install {packages}{extra}")


def accelerator_options(log_with: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments for the Accelerator of a run that logs to ``log_with``.

    The run folder does not exist yet when the Accelerator is made (its name is chosen on the main
    process and broadcast through the Accelerator), so the project directory is provisional:
    :meth:`RunTracking.start` points it at ``<run folder>/tracking`` before any tracker starts.
    """
    if not log_with:
        return {}
    check_installed(log_with)
    from accelerate.utils import ProjectConfiguration

    return {"log_with": list(log_with), "project_config": ProjectConfiguration(project_dir=TRACKING_DIR)}


# ---------------------------------------------------------------------------------------------
# values


def metric_key(key: str) -> str:
    """A name every tracker accepts (MLflow's are the strictest: letters, digits, ``_-./`` and
    spaces)."""
    return re.sub(r"[^\w./\- ]", "_", key)


def epoch_values(stage: str, record: "EpochRecord") -> dict[str, float]:
    """One epoch's scalars, named ``<stage>/loss/<term>``, ``<stage>/metric/<name>``, ``<stage>/lr``,
    ``<stage>/epoch_seconds`` (split into ``train_seconds`` and ``eval_seconds``: the epoch's
    optimisation and its evaluation), ``<stage>/skipped_batches`` and ``<stage>/scaler_skipped``."""
    values = {f"{stage}/loss/{name}": value for name, value in record.losses.items()}
    values.update({f"{stage}/metric/{name}": value for name, value in record.metrics.items()})
    if record.lr is not None:
        values[f"{stage}/lr"] = record.lr
    values[f"{stage}/epoch_seconds"] = record.seconds
    values[f"{stage}/train_seconds"] = record.train_seconds
    values[f"{stage}/eval_seconds"] = record.eval_seconds
    values[f"{stage}/skipped_batches"] = record.skipped_batches
    values[f"{stage}/scaler_skipped"] = record.scaler_skipped
    return {metric_key(k): float(v) for k, v in values.items()}


def _scalar(value: Any) -> str | int | float | bool:
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)  # None, lists of scalars: one readable string


def flatten(value: Any, prefix: str = "") -> dict[str, str | int | float | bool]:
    """A nested recipe as ``{"train.optimizer.lr": 0.05, "loss.0.name": "kl_div", ...}``: trackers
    take scalars and strings only. Lists of tables are numbered; lists of scalars become one
    string (``"train.report_epochs": "[5, 10]"``)."""
    out: dict[str, str | int | float | bool] = {}
    if isinstance(value, dict):
        if not value and prefix:
            out[metric_key(prefix)] = "{}"
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)) and any(isinstance(item, (dict, list, tuple)) for item in value):
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}.{i}"))
    else:
        out[metric_key(prefix)] = _scalar(value)
    return out


def hyperparameters(recipe: "Recipe") -> dict[str, str | int | float | bool]:
    return flatten(recipe.to_dict())


# ---------------------------------------------------------------------------------------------
# one run's trackers


def _mlflow_run_exists(run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


class RunTracking:
    """The trackers of one run: started once the run folder exists, fed every finished epoch,
    finished at the end of the run. Does nothing without ``train.log_with`` and off the main
    process."""

    #: The trackers of a run that ended with an exception before finishing them (one process can
    #: run several recipes: notebooks, tests); the next run closes them first.
    _open: "RunTracking | None" = None

    def __init__(self, accelerator: "Accelerator | None" = None, path: Path | None = None):
        self.accelerator = accelerator
        self.path = path
        self._restore_env: dict[str, str | None] = {}
        self._set_mlflow_uri = False

    @property
    def enabled(self) -> bool:
        return self.accelerator is not None

    @classmethod
    def start(cls, accelerator: "Accelerator", recipe: "Recipe", folder: "RunFolder",
              resumed: bool = False) -> "RunTracking":
        """Start the Accelerator's trackers in ``<run folder>/tracking``; with ``resumed``, continue
        the ones the run started before (no second copy of the hyperparameters)."""
        if not accelerator.log_with or not accelerator.is_main_process:
            return cls()
        if cls._open is not None:
            cls._open.finish(failed=True)
        path = folder.path / TRACKING_DIR
        path.mkdir(parents=True, exist_ok=True)
        config = accelerator.project_configuration
        config.project_dir = config.logging_dir = str(path)
        tracking = cls(accelerator, path)
        state_file = path / STATE_FILE
        previous = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {}
        names = [str(t) for t in accelerator.log_with]
        init_kwargs: dict[str, dict[str, Any]] = {}
        if "mlflow" in names:
            init_kwargs["mlflow"] = tracking._mlflow_options(folder, previous.get("mlflow", {}))
        cls._open = tracking
        accelerator.init_trackers(recipe.run.name, config=None if resumed and previous else hyperparameters(recipe),
                                  init_kwargs=init_kwargs)
        state: dict[str, Any] = {"log_with": names}
        if "mlflow" in names:
            import mlflow

            run = accelerator.get_tracker("mlflow", unwrap=True)
            state["mlflow"] = {"run_id": run.info.run_id, "tracking_uri": mlflow.get_tracking_uri()}
        from kdengine.io.atomic import atomic_write_text

        atomic_write_text(state_file, json.dumps(state, indent=2))
        return tracking

    def _mlflow_options(self, folder: "RunFolder", previous: dict[str, Any]) -> dict[str, Any]:
        """MLflow's run name, the run to reopen on a resume, and a file store in the run folder
        unless ``MLFLOW_TRACKING_URI`` chooses the store."""
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # MLflow 3 refuses its file store unless asked for it; mlflow-skinny has no database
            # backend, and a folder of plain files needs no server.
            self._restore_env["MLFLOW_ALLOW_FILE_STORE"] = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
            mlflow.set_tracking_uri(Path(self.path / "mlruns").resolve().as_uri())
            self._set_mlflow_uri = True
        options: dict[str, Any] = {"run_name": folder.path.name}
        if previous.get("run_id") and _mlflow_run_exists(previous["run_id"]):
            options["run_id"] = previous["run_id"]  # a resume continues the same MLflow run
        if mlflow.active_run() is not None:
            options["nested_run"] = True  # inside a run of the caller's own
        return options

    def log_epoch(self, stage: str, record: "EpochRecord") -> None:
        """Log one finished epoch of ``stage`` (step: the epoch)."""
        if not self.enabled:
            return
        self.accelerator.log(epoch_values(stage, record), step=record.epoch)

    def finish(self, failed: bool = False) -> None:
        """Close every tracker (what ``Accelerator.end_training`` does, without destroying the
        process group, which later seeds of a multi-seed run still need)."""
        if not self.enabled:
            return
        trackers, self.accelerator.trackers = list(self.accelerator.trackers), []
        for tracker in trackers:
            try:
                if failed and tracker.name == "mlflow":
                    import mlflow

                    mlflow.end_run(status="FAILED")
                else:
                    tracker.finish()
            except Exception as exc:
                if not failed:
                    raise
                # closing what a failed run left open must not fail the next run
                warnings.warn(f"could not close the {tracker.name} tracker of a failed run: {exc}")
        if self._set_mlflow_uri:
            import mlflow

            mlflow.set_tracking_uri(None)  # back to MLflow's default (this also clears the variable)
        for name, value in self._restore_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.accelerator = None
        if RunTracking._open is self:
            RunTracking._open = None
