"""osmf-grm in MLflow: a pyfunc for consumers, and a torch-side loader for the pipeline's stages."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema

from osmf_lib import tracking
from osmf_lib.config import Config
from osmf_lib.grm.features import GrmError
from osmf_lib.grm.model import SCORE_COLUMNS, Grm
from osmf_lib.grm.train import TrainedGrm
from osmf_lib.tracking import TrackingError

ARTIFACT = "grm"
# Where train_grm logs the group-agnostic baseline, in the run of the model it is compared with.
BASELINE_ARTIFACT = "osmf-grm-baseline"
SIGNATURE = ModelSignature(
    Schema(
        [ColSpec(DataType.string, "product_id"), ColSpec(DataType.long, "group_id"), ColSpec(DataType.string, "prompt")]
    ),
    Schema([ColSpec(DataType.double, "score")]),
)


class GrmPyfunc(mlflow.pyfunc.PythonModel):
    """(product_id, group_id, prompt) rows of the groups of the night it was trained for in; a click
    logit `score` per row out (higher: the group is likelier to click that background)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.grm = Grm.load(Path(context.artifacts[ARTIFACT]))

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        return _output(self.grm, model_input)


def _output(grm: Grm, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"score": grm.score(frame).astype("float64")})


def log_grm(trained: TrainedGrm, cfg: Config, name: str, ds: date) -> str:
    """Log the model, its parameters and held-out metrics to the active run; return the model URI."""
    if mlflow.active_run() is None:
        raise TrackingError("log_grm needs an active MLflow run")
    grm = trained.grm
    # Distinct keys let one run log the GRM and its baseline side by side.
    prefix = "grm" if grm.group_aware else "grm_baseline"
    params: dict[str, Any] = {f"grm.{key}": value for key, value in cfg.grm.model_dump().items()}
    params |= {
        f"{prefix}.group_aware": grm.group_aware,
        f"{prefix}.train_cells": trained.train_cells,
        f"{prefix}.train_pairs": trained.train_pairs,
        f"{prefix}.profile_features": len(grm.featurizer.vocab.features),
    }
    mlflow.log_params(params)
    mlflow.log_metrics({f"{prefix}.{key}": value for key, value in trained.metrics.items()})
    mlflow.log_metric(f"{prefix}.truncated_prompts", grm.truncated_prompts)
    for epoch, loss in enumerate(trained.train_losses, start=1):
        mlflow.log_metric(f"{prefix}.train_loss", loss, step=epoch)
    example = trained.example[list(SCORE_COLUMNS)].astype({"group_id": "int64"})
    return tracking.log_folder_model(
        name,
        ARTIFACT,
        grm.save,
        __file__,
        signature=SIGNATURE,
        input_example=example,
        metadata={"group_aware": grm.group_aware, "groups_ds": ds.isoformat()},
    )


def load_grm(model_uri: str, device: str = "cpu", unreadable_image: str = "fail") -> Grm:
    """The torch-side model behind a logged osmf-grm (any MLflow model URI, e.g. models:/osmf-grm@champion);
    a missing or unreadable one fails naming the URI."""
    return tracking.load_logged(
        model_uri, lambda folder: Grm.load(folder / ARTIFACT, device, unreadable_image), GrmError
    )
