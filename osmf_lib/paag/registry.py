"""osmf-paag in MLflow: a pyfunc wrapper for consumers, and a fast torch-side loader for Spark UDFs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.types import DataType

from osmf_lib import tracking
from osmf_lib.config import Config
from osmf_lib.night import PAAG
from osmf_lib.paag.features import PaagError, UnreadableImage
from osmf_lib.paag.model import USER_ATTRIBUTES, Paag
from osmf_lib.paag.train import TrainedPaag
from osmf_lib.tracking import TrackingError

ARTIFACT = "paag"
# Where train_paag logs the product-agnostic baseline, in the run of the model it is compared with.
BASELINE_ARTIFACT = "osmf-paag-baseline"
IMAGE_INPUT = "product_image_uri"
# Missing user values mean "unknown"; a missing image means the product has no picture (and the
# image is typed a string even where an example of products without pictures holds only nulls).
OPTIONAL_INPUTS = (*USER_ATTRIBUTES, IMAGE_INPUT)


class PaagPyfunc(mlflow.pyfunc.PythonModel):
    """(product, user) rows with the product's title, category and image in; one embedding per row out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.paag = Paag.load(Path(context.artifacts[ARTIFACT]))

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        return _output(self.paag, model_input)


def _output(paag: Paag, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"embedding": paag.embed(frame).tolist()})


def log_paag(trained: TrainedPaag, cfg: Config, name: str = PAAG.name) -> str:
    """Log the model, its parameters and validation metrics to the active run; return the model URI."""
    if mlflow.active_run() is None:
        raise TrackingError("log_paag needs an active MLflow run")
    paag = trained.paag
    # Distinct keys let one run log PAAG and its baseline side by side.
    prefix = "paag" if paag.product_aware else "paag_baseline"
    params: dict[str, Any] = {f"paag.{key}": value for key, value in cfg.paag.model_dump().items()}
    params |= {
        f"{prefix}.product_aware": paag.product_aware,
        f"{prefix}.train_rows": trained.train_rows,
        f"{prefix}.validation_rows": trained.validation_rows,
        f"{prefix}.validation_users": trained.validation_users,
        f"{prefix}.text_encoder": cfg.models.text_encoder,
        f"{prefix}.vision_encoder": "tiny-vit" if cfg.models.profile == "tiny" else cfg.models.vision_encoder,
    }
    mlflow.log_params(params)
    mlflow.log_metrics({f"{prefix}.{key}": value for key, value in trained.metrics.items()})
    mlflow.log_metric(f"{prefix}.unreadable_images", len(paag.unreadable_images))
    for epoch, loss in enumerate(trained.train_losses, start=1):
        mlflow.log_metric(f"{prefix}.train_loss", loss, step=epoch)
    return tracking.log_folder_model(
        name,
        ARTIFACT,
        paag.save,
        __file__,
        signature=tracking.signature(
            trained.example, _output(paag, trained.example), OPTIONAL_INPUTS, {IMAGE_INPUT: DataType.string}
        ),
        input_example=trained.example,
        metadata={"product_aware": paag.product_aware, "embedding_dim": paag.embedding_dim},
    )


def load_paag(model_uri: str, device: str = "cpu", unreadable_image: UnreadableImage = "fail") -> Paag:
    """The torch-side model behind a logged osmf-paag (any MLflow model URI, e.g. models:/osmf-paag@champion).

    Cheaper than pyfunc loading: no environment checks, and the text and image encoders load only
    when a product's features are missing. Load once per process; the result is thread-safe. A
    missing or unreadable model fails naming the URI.
    """
    return tracking.load_logged(
        model_uri, lambda folder: Paag.load(folder / ARTIFACT, device, unreadable_image), PaagError
    )
