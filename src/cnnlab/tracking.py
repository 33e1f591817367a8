"""Experiment tracking as callbacks: TensorBoard event files and MLflow runs, written as training goes.

    cnnlab train cnn4 --tensorboard                 # event files in OUT/tensorboard/RUN (tensorboard --logdir OUT/tensorboard)
    cnnlab study ... --mlflow                       # a local store beside the output: sqlite:///OUT/mlflow.db
    cnnlab ensemble ... --mlflow --mlflow-uri http://server:5000

Studies, ensembles and searches get one parent MLflow run with a child run per run, member or trial.
Where runs train elsewhere (Ray tasks), the driver logs each one from its run directory when it
arrives (`log_run_dir`), so the same metrics reach the same store. Both libraries are optional
extras (`pip install 'cnnlab[tracking]'`); without them the flag fails in one line.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from cnnlab.callbacks import Callback
from cnnlab.errors import UserError

EPOCH_SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_accuracy": "accuracy/train",
                 "val_accuracy": "accuracy/val", "lr": "learning_rate"}
FINAL_METRICS = ("val_loss", "val_accuracy", "test_loss", "test_accuracy", "train_seconds_total",
                 "train_images_per_second", "epochs_done", "weights_epoch")


def _require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{package}: not installed; install the tracking extra: pip install 'cnnlab[tracking]'") from None


def flat_params(config: dict) -> dict[str, str]:
    """A config as flat string parameters (model options as model.NAME)."""
    out = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in config.items() if k != "model_params"}
    out.update({f"model.{k}": str(v) for k, v in (config.get("model_params") or {}).items()})
    return out


def epoch_values(row: dict, train_images: int | None = None) -> dict[str, float]:
    values = {name: float(row[key]) for key, name in EPOCH_SCALARS.items() if row.get(key) not in (None, "")}
    seconds = float(row.get("train_seconds") or 0)
    if train_images and seconds > 0:
        values["images_per_second"] = train_images / seconds
    return {k: v for k, v in values.items() if v == v}  # NaN (no validation split) is left out


def confusion_figure(run_dir: Path, split: str = "val"):
    """scikit-learn's ConfusionMatrixDisplay of a finished run's stored logits (None without that split)."""
    import matplotlib

    matplotlib.use("Agg")
    from sklearn.metrics import ConfusionMatrixDisplay

    from cnnlab.runs import RunDir

    run = RunDir(run_dir)
    try:
        logits, labels = run.logits(split)
    except UserError:
        return None
    names = run.read_model_meta()["class_names"]
    display = ConfusionMatrixDisplay.from_predictions(labels, logits.argmax(1), labels=list(range(len(names))),
                                                      display_labels=names, xticks_rotation=45, colorbar=False)
    display.ax_.set_title(f"{split} confusion matrix")
    return display.figure_


class TensorBoard(Callback):
    """Scalars per epoch (losses, accuracies, learning rate, images/second), the config as hyperparameters
    and the confusion matrix as an image, one event folder per run directory."""

    def __init__(self, log_dir: str | Path | None = None):
        self.log_dir = Path(log_dir) if log_dir else None
        self.writers = []
        _require("torch.utils.tensorboard", "tensorboard")

    def on_train_start(self, ctx) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        for run in ctx.run_dirs:
            folder = (self.log_dir or run.path.parent / "tensorboard") / run.path.name
            self.writers.append(SummaryWriter(str(folder)))
        self.train_images = len(ctx.setup.train)

    def on_epoch_end(self, ctx, rows: list[dict]) -> None:
        for writer, row in zip(self.writers, rows):
            for name, value in epoch_values(row, self.train_images).items():
                writer.add_scalar(name, value, row["epoch"])
            writer.flush()

    def on_train_end(self, ctx, results: list[dict]) -> None:
        for writer, run, metrics, config in zip(self.writers, ctx.run_dirs, results, member_configs(ctx)):
            final = {f"final/{k}": float(metrics[k]) for k in FINAL_METRICS if isinstance(metrics.get(k), (int, float))}
            writer.add_hparams(flat_params(config), final, run_name=".")
            figure = confusion_figure(run.path)
            if figure is not None:
                writer.add_figure("confusion_matrix/val", figure, metrics.get("epochs_done", 0))
            writer.flush()
        self.close()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


def member_configs(ctx) -> list[dict]:
    return [c.to_dict() for c in ctx.member_configs]


class MLflow(Callback):
    """One MLflow run per run directory (a child of `parent_run_id` when given): parameters, per-epoch
    metrics as they come, final metrics, and the run directory's files (the model included) as artifacts."""

    def __init__(self, uri: str | None = None, experiment: str = "cnnlab", parent_run_id: str | None = None):
        _require("mlflow", "mlflow")
        self.uri, self.experiment, self.parent = uri, experiment, parent_run_id
        self.run_ids: list[str] = []

    def client(self, near: Path):
        from mlflow.tracking import MlflowClient

        self.uri = self.uri or default_store(near)
        return MlflowClient(tracking_uri=self.uri)

    def start(self, client, name: str, config: dict) -> str:
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            self.experiment, artifact_location=local_artifacts(self.uri))
        tags = {"mlflow.runName": name, **({"mlflow.parentRunId": self.parent} if self.parent else {})}
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        from mlflow.entities import Param

        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in flat_params(config).items()])
        return run_id

    def on_train_start(self, ctx) -> None:
        self._client = self.client(ctx.run_dirs[0].path.parent)
        self.run_ids = [self.start(self._client, run.path.name, config)
                        for run, config in zip(ctx.run_dirs, member_configs(ctx))]
        self.train_images = len(ctx.setup.train)

    def on_epoch_end(self, ctx, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        for run_id, row in zip(self.run_ids, rows):
            stamp = now_ms()
            self._client.log_batch(run_id, metrics=[Metric(k, v, stamp, row["epoch"])
                                                    for k, v in epoch_values(row, self.train_images).items()])

    def on_train_end(self, ctx, results: list[dict]) -> None:
        for run_id, run, metrics in zip(self.run_ids, ctx.run_dirs, results):
            finish_mlflow_run(self._client, run_id, run.path, metrics)


def now_ms() -> int:
    """MLflow's timestamps: milliseconds since the epoch."""
    return int(time.time() * 1000)


def default_store(near: Path) -> str:
    """MLflow's current default backend (SQLite), beside the output folder rather than in the working directory."""
    near = Path(near).resolve()
    near.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{near / 'mlflow.db'}"


def local_artifacts(uri: str) -> str | None:
    """A local SQLite store keeps its artifacts beside it (MLflow's own default is ./mlruns in the working directory)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def finish_mlflow_run(client, run_id: str, run_dir: Path, metrics: dict) -> None:
    from mlflow.entities import Metric

    final = [Metric(f"final_{k}", float(metrics[k]), now_ms(), 0) for k in FINAL_METRICS
             if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool)]
    client.log_batch(run_id, metrics=final)
    client.log_artifacts(run_id, str(run_dir), artifact_path="run")  # config, history, metrics, the model's files
    client.set_terminated(run_id)


def log_run_dir(tracker: MLflow, run_dir: Path) -> str:
    """Log a finished run directory (trained elsewhere, e.g. by a Ray task) as if it had been watched."""
    from mlflow.entities import Metric

    from cnnlab.runs import RunDir

    run = RunDir(run_dir)
    client = tracker.client(Path(run_dir).parent)
    run_id = tracker.start(client, run.path.name, run.read_config())
    for row in run.history():
        client.log_batch(run_id, metrics=[Metric(k, v, now_ms(), int(row["epoch"])) for k, v in epoch_values(row).items()])
    finish_mlflow_run(client, run_id, run.path, run.read_metrics())
    return run_id


def parent_run(uri: str | None, near: Path, name: str, params: dict, experiment: str = "cnnlab") -> tuple[object, str]:
    """(client, run id) of a parent run grouping a study's, ensemble's or search's runs."""
    tracker = MLflow(uri, experiment)
    client = tracker.client(near)
    return client, tracker.start(client, name, params)
