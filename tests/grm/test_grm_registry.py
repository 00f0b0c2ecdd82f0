"""osmf-grm outside the process that trained it: the MLflow pyfunc in a clean Python."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import get_model_info

from osmf_lib import tracking
from osmf_lib.config import Config
from osmf_lib.grm import fit_grm, load_grm, log_grm
from osmf_lib.grm.model import SCORE_COLUMNS

SHOWN = 1000


def _night() -> dict[str, pd.DataFrame]:
    """Four products, two groups each, two logged prompts the groups rank in opposite orders."""
    prompts = ("a sunlit beach scene, warm tones", "a rustic kitchen scene, cool tones")
    rates = {0: (0.10, 0.05), 1: (0.05, 0.10)}
    splits = ("train", "train", "train", "validation")
    products = [f"p{i}" for i in range(4)]
    cells = [
        (pid, group, prompt, SHOWN, int(SHOWN * rate), split)
        for pid, split in zip(products, splits, strict=True)
        for group, group_rates in rates.items()
        for prompt, rate in zip(prompts, group_rates, strict=True)
    ]
    pairs = [
        (pid, group, prompts[best], prompts[1 - best], True, split)
        for pid, split in zip(products, splits, strict=True)
        for group, best in ((0, 0), (1, 1))
    ]
    return {
        "cells": pd.DataFrame(cells, columns=["product_id", "group_id", "prompt", "impressions", "clicks", "split"]),
        "pairs": pd.DataFrame(
            pairs, columns=["product_id", "group_id", "chosen_prompt", "rejected_prompt", "conflict", "split"]
        ),
        "profiles": pd.DataFrame(
            [(pid, g, f"gender={gender}", 1.0) for pid in products for g, gender in ((0, "female"), (1, "male"))],
            columns=["product_id", "group_id", "feature", "share"],
        ),
        "products": pd.DataFrame(
            {"product_id": products, "title": [f"Mug {p}" for p in products], "category": "home", "image_uri": None}
        ),
    }


def test_the_pyfunc_scores_a_nights_groups_in_a_clean_python(make_cfg, tmp_path: Path, predict_in_clean_python) -> None:
    cfg: Config = make_cfg("gpu.device=cpu", "grm.epochs=3", "grm.batch_size=4")
    night = _night()
    trained = fit_grm(night["cells"], night["pairs"], night["profiles"], night["products"], cfg)
    tracking.configure(cfg)
    with mlflow.start_run():
        uri = log_grm(trained, cfg, name="osmf-grm", ds=dt.date(2026, 11, 3))
    info = get_model_info(uri)
    assert info.signature.inputs.input_names() == list(SCORE_COLUMNS)
    assert info.metadata == {"group_aware": True, "groups_ds": "2026-11-03"}

    model = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "model")))
    rows = pd.DataFrame(
        {"product_id": ["p3", "p3", "p0"], "group_id": [0, 1, 1], "prompt": ["a misty forest scene", "a beach", "x"]}
    )
    predicted, osmf_files = predict_in_clean_python(model, rows, tmp_path)

    assert list(predicted.columns) == ["score"]
    np.testing.assert_allclose(predicted["score"], trained.grm.score(rows), atol=1e-5)
    np.testing.assert_allclose(load_grm(uri).score(rows), trained.grm.score(rows), atol=1e-6)
    code = model / "code" / "osmf_lib"
    assert osmf_files and all(Path(f).is_relative_to(code) for f in osmf_files)
