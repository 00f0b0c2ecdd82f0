"""osmf-paag outside the process that trained it: the MLflow pyfunc in a clean Python, and the
torch model in Spark's Python workers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from osmf_lib import tracking
from osmf_lib.config import Config
from osmf_lib.job import StageError, worker_errors_as_stage_errors
from osmf_lib.paag import (
    SINGLE_VALUED_ATTRIBUTES,
    USER_ATTRIBUTES,
    Paag,
    PaagError,
    TrainedPaag,
    embed,
    fit_paag,
    log_paag,
)
from osmf_lib.paag.model import INTERESTS, PAIR_PRODUCT_COLUMNS

os.environ.setdefault("HF_HUB_OFFLINE", "1")

USERS = 60


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A small log of three products: one with a picture, one without (a film in a ratings log)
    and one whose picture file is gone."""
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGBA", (32, 32), (200, 40, 40, 255)).save(folder / "mug.png")
    products = pd.DataFrame(
        {
            "product_id": ["p-mug", "p-film", "p-lamp"],
            "title": ["Red Mug", "The Long Voyage", "Brass Lamp"],
            "category": ["home", "films", "home"],
            "image_uri": [str(folder / "mug.png"), None, str(folder / "gone.png")],
        }
    )
    creatives = pd.DataFrame(
        {
            "creative_id": ["c1", "c2", "c3"],
            "product_id": ["p-mug", "p-film", "p-lamp"],
            "prompt": ["a sunny kitchen table", "a dark cinema hall", "a cosy living room at dusk"],
        }
    )
    rng = np.random.default_rng(0)
    users = pd.DataFrame({"user_id": [f"u{i:03d}" for i in range(USERS)]})
    for attribute in SINGLE_VALUED_ATTRIBUTES:
        users[attribute] = [f"{attribute}-{v}" for v in rng.integers(0, 3, USERS)]
    users[INTERESTS] = [["films", "home", "sports"][: int(n)] for n in rng.integers(0, 4, USERS)]
    shown = rng.integers(0, len(creatives), 600)
    examples = users.iloc[rng.integers(0, USERS, 600)].reset_index(drop=True)
    examples["creative_id"] = creatives["creative_id"].to_numpy()[shown]
    examples["product_id"] = creatives["product_id"].to_numpy()[shown]
    examples["clicked"] = rng.random(600) < 0.3
    return examples, products, creatives


@pytest.fixture(scope="module")
def trained(log, make_cfg: Callable[..., Config]) -> TrainedPaag:
    settings = ("gpu.device=cpu", "paag.epochs=1", "paag.validation_fraction=0.25", "models.unreadable_image=text_only")
    return fit_paag(*log, make_cfg(*settings))


def pairs_for(log, products: pd.DataFrame) -> pd.DataFrame:
    examples, _, _ = log
    users = examples.drop_duplicates("user_id").head(8)[["user_id", *USER_ATTRIBUTES]]
    return products.merge(users, how="cross").rename(columns={v: k for k, v in PAIR_PRODUCT_COLUMNS.items()})


def test_the_pyfunc_loads_and_embeds_in_a_clean_python_with_only_its_logged_requirements(
    trained: TrainedPaag, log, cfg: Config, tmp_path: Path, predict_in_clean_python
) -> None:
    assert trained.paag.unreadable_images == ["p-lamp"]
    tracking.configure(cfg)
    with mlflow.start_run() as run:
        uri = log_paag(trained, cfg)
    model = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "model")))
    _, products, _ = log
    # p-new is no trained product: the clean Python computes its features with the shipped encoders.
    new = pd.DataFrame({"product_id": ["p-new"], "title": ["Night Train"], "category": ["films"], "image_uri": [""]})
    pairs = pairs_for(log, pd.concat([products, new]))
    predicted, osmf_files = predict_in_clean_python(model, pairs, tmp_path)

    np.testing.assert_allclose(np.stack(predicted["embedding"]), embed(trained, pairs), atol=1e-5)
    code = model / "code" / "osmf_lib"
    assert osmf_files and all(Path(f).is_relative_to(code) for f in osmf_files)
    # Trained with models.unreadable_image=text_only, it logged how many pictures it went without.
    assert mlflow.get_run(run.info.run_id).data.metrics["paag.unreadable_images"] == 1


def test_a_picture_a_spark_worker_cannot_read_fails_with_one_line_naming_product_and_file(
    spark, trained: TrainedPaag, log, tmp_path: Path
) -> None:
    trained.paag.save(tmp_path / "paag")
    folder = str(tmp_path / "paag")
    gone = tmp_path / "moved-away.png"
    _, products, _ = log
    pairs = pairs_for(log, products.head(1).assign(product_id="p-moved", image_uri=str(gone)))

    def embed_batches(batches):
        model = Paag.load(Path(folder))
        for batch in batches:
            yield pd.DataFrame({"product_id": batch["product_id"], "embedding": list(model.embed(batch))})

    # One partition, so one Python worker pays for importing torch.
    rows = spark.createDataFrame(pairs).coalesce(1)
    embedded = rows.mapInPandas(embed_batches, "product_id string, embedding array<float>")
    # Written as the stage writes its Delta partition: the worker's error comes back inside the
    # JVM's job-aborted exception.
    with pytest.raises(StageError) as failure, worker_errors_as_stage_errors(PaagError, "build_paag_embeddings"):
        embedded.write.parquet(str(tmp_path / "out"))
    message = str(failure.value)
    assert message.startswith(f"build_paag_embeddings: product p-moved: cannot read its image {gone}: ")
    assert "\n" not in message
