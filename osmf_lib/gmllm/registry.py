"""osmf-gmllm in MLflow: a pyfunc for consumers, and a torch-side loader for the pipeline's stages."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema

from osmf_lib import tracking
from osmf_lib.gmllm.features import GmllmError
from osmf_lib.gmllm.generator import Gmllm

ARTIFACT = "gmllm"
# Every Group-DPO variant is logged in the night's run under its artifact; osmf-gmllm registers one.
ARTIFACTS = {"group_dpo": "osmf-gmllm-group", "prefix_dpo": "osmf-gmllm-prefix", "onesize_dpo": "osmf-gmllm-onesize"}
# Tags on an osmf-gmllm version: the base it was aligned from, the GRM that judged it, its variant.
TAG_BASE = "osmf.gmllm_base_version"
TAG_GRM = "osmf.grm_version"
TAG_VARIANT = "osmf.gmllm_variant"
SIGNATURE = ModelSignature(
    Schema([ColSpec(DataType.string, "product_id"), ColSpec(DataType.long, "group_id")]),
    Schema([ColSpec(DataType.string, "prompt"), ColSpec(DataType.boolean, "usable")]),
)


class GmllmPyfunc(mlflow.pyfunc.PythonModel):
    """(product_id, group_id) rows of the groups of the night it was trained for in; the most likely
    background description per row out, with `usable` (False: do not render it)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.gmllm = Gmllm.load(Path(context.artifacts[ARTIFACT]))

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        return self.gmllm.write(model_input)[["prompt", "usable"]]


def log_gmllm(gmllm: Gmllm, name: str, ds: date, example: pd.DataFrame) -> str:
    """Log the generator to the active run; return the model URI."""
    return tracking.log_folder_model(
        name,
        ARTIFACT,
        gmllm.save,
        __file__,
        signature=SIGNATURE,
        input_example=example[["product_id", "group_id"]].astype({"group_id": "int64"}),
        metadata={"group_aware": gmllm.group_aware, "groups_ds": ds.isoformat()},
    )


def load_gmllm(model_uri: str, device: str = "cpu", unreadable_image: str = "fail") -> Gmllm:
    """The torch-side generator behind a logged osmf-gmllm (any MLflow model URI); a missing or
    unreadable one fails naming the URI."""
    return tracking.load_logged(
        model_uri, lambda folder: Gmllm.load(folder / ARTIFACT, device, unreadable_image), GmllmError
    )
