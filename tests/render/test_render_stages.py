"""generate_creatives as the DAG runs it, on the small lakehouse whose groups want opposite
backgrounds: every target rendered once, best-of-N by the GRM, resumable, sharded."""

from __future__ import annotations

import collections
import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from delta.tables import DeltaTable
from PIL import Image

from osmf_lib import artifacts, tables
from osmf_lib.config import Config
from osmf_lib.gmllm import stages as gmllm_stages
from osmf_lib.gmllm.registry import load_gmllm
from osmf_lib.grm import stages as grm_stages
from osmf_lib.images import ImageLimits
from osmf_lib.job import Shard, StageError, StageResult
from osmf_lib.render import product_folder, stages
from osmf_lib.render.tiny import METADATA, library_of
from osmf_lib.synth.backgrounds import paint_background
from osmf_lib.synth.images import product_png
from osmf_lib.tables import GENERATED_CREATIVES, GROUP_PROFILES, PRODUCTS

DS = dt.date(2026, 11, 3)  # the night of make_group_lakehouse
NO_PICTURE = "p05"
SETTINGS = (
    "gmllm.epochs=20",
    "gmllm.batch_size=16",
    "gmllm.max_new_tokens=16",
    "group_dpo.rounds=0",
    "render.tiny.vae_steps=2",
    "render.tiny.unet_steps=2",
    "render.steps=2",
    "render.candidates=3",
    "render.batch_size=4",
)


def _library(landing: Path) -> None:
    folder = landing / "images" / "backgrounds"
    folder.mkdir(parents=True)
    prompts = ["a sunlit beach scene, warm golden tones", "a misty forest scene, cool blue tones"] * 4
    for i, prompt in enumerate(prompts):
        paint_background(prompt, 64, seed=i).save(folder / f"{i}.png")
    lines = [json.dumps({"file_name": f"{i}.png", "text": prompt}) + "\n" for i, prompt in enumerate(prompts)]
    (folder / METADATA).write_text("".join(lines))


def _pictures(spark, cfg) -> None:
    """Cut-outs for every product but NO_PICTURE."""
    folder = Path(cfg.lakehouse.landing) / "images" / "products"
    folder.mkdir(parents=True)
    products = tables.read(spark, PRODUCTS, cfg).toPandas().sort_values("product_id")
    uris = []
    for i, product_id in enumerate(products["product_id"]):
        path = folder / f"{product_id}.png"
        path.write_bytes(product_png("home", np.random.default_rng(i)))
        uris.append(None if product_id == NO_PICTURE else str(path))
    products["image_uri"] = uris
    tables.merge(spark, spark.createDataFrame(products, PRODUCTS.schema()), PRODUCTS, cfg, ds=DS)


@pytest.fixture(scope="module")
def lakehouse(spark, make_group_lakehouse, run_stage, tmp_path_factory):
    cfg = make_group_lakehouse("render", *SETTINGS, f"render.artifacts={tmp_path_factory.mktemp('creatives')}")
    _library(Path(cfg.lakehouse.landing))
    _pictures(spark, cfg)
    run_stage(grm_stages.train_grm, cfg)
    run_stage(gmllm_stages.pretrain_gmllm, cfg)
    run_stage(gmllm_stages.train_group_dpo, cfg)
    return cfg


@pytest.fixture(scope="module")
def rendered(lakehouse, run_stage) -> StageResult:
    return run_stage(stages.generate_creatives, lakehouse)


def _rows(spark, cfg) -> pd.DataFrame:
    return tables.read(spark, GENERATED_CREATIVES, cfg, ds=DS).toPandas()


def test_every_target_gets_its_candidates_and_one_selected_the_grms_best(spark, lakehouse, rendered):
    rows = _rows(spark, lakehouse)
    targets = tables.read(spark, GROUP_PROFILES, lakehouse, ds=DS).select("product_id", "group_id").toPandas()
    groups = targets[targets["product_id"] != NO_PICTURE]  # counted, not rendered
    # Every target with a picture: its greedy description first, then up to two distinct samples
    # (this world's generator knows one answer per group, so its samples repeat it).
    counts = rows.groupby(stages.KEY).size()
    assert set(counts.index) == set(map(tuple, groups.to_numpy())) and counts.between(1, 3).all()
    writer = load_gmllm("models:/osmf-gmllm/1")
    greedy = writer.write(groups.reset_index(drop=True)).set_index(stages.KEY)["prompt"]
    first = rows[rows["candidate"] == 0].set_index(stages.KEY)["prompt"]
    assert first.to_dict() == greedy.loc[first.index].to_dict()
    assert rows.groupby(stages.KEY)["selected"].sum().eq(1).all()
    best = rows.loc[rows.groupby(stages.KEY)["grm_score"].idxmax()]
    assert best["selected"].all()
    assert rows["gmllm_version"].eq("osmf-gmllm/1").all() and rows["grm_version"].eq("osmf-grm/1").all()
    for uri in rows["image_uri"]:
        with Image.open(uri) as image:
            assert image.size == (64, 64)
    sheet = Path(lakehouse.render.artifacts) / DS.isoformat() / "p00" / "contact-sheet.png"
    assert sheet.exists()
    assert rendered.written == {GENERATED_CREATIVES.name: len(rows)}
    shown = {key: rendered.metrics[key] for key in ("products", "already_rendered", "no_image")}
    assert shown == {"products": 12, "already_rendered": 0, "no_image": 1}


def test_a_rerun_renders_only_what_is_missing(spark, lakehouse, rendered, run_stage):
    before = _rows(spark, lakehouse).set_index([*stages.KEY, "candidate"]).sort_index()
    again = run_stage(stages.generate_creatives, lakehouse)
    assert again.metrics["already_rendered"] == 11 and again.written == {}
    # A run killed before its last commit: the product's rows are missing; only they are redone.
    DeltaTable.forPath(spark, GENERATED_CREATIVES.location(lakehouse)).delete("product_id = 'p01'")
    resumed = run_stage(stages.generate_creatives, lakehouse)
    redone = before.loc["p01"]
    assert resumed.written == {GENERATED_CREATIVES.name: len(redone)}
    after = _rows(spark, lakehouse).set_index([*stages.KEY, "candidate"]).sort_index()
    pd.testing.assert_frame_equal(after, before)  # same seeds, same prompts, same scores and files


def test_shards_cover_every_product_exactly_once():
    products = [f"p{i:03d}" for i in range(200)]
    parts = [stages.in_shard(products, Shard(i, 4)) for i in range(4)]
    assert sorted(p for part in parts for p in part) == products and min(map(len, parts)) > 20
    assert stages.in_shard(products, Shard(0, 1)) == products
    with pytest.raises(Exception, match="need 0 <= INDEX < COUNT"):
        Shard.parse("4/4")


class _Writer:
    """Writes from a script: per (product, group), the greedy description and the samples in order."""

    def __init__(self, greedy: dict, samples: dict) -> None:
        self.greedy, self.samples = greedy, samples

    def write(self, rows, profiles, products, samples=0, seed=0, temperature=1.0):
        out = []
        for key in map(tuple, rows[stages.KEY].to_numpy()):
            texts = [self.greedy[key]] if not samples else (self.samples[key] * samples)[:samples]
            out += [(*key, i, text, not text.startswith("!")) for i, text in enumerate(texts)]
        return pd.DataFrame(out, columns=[*stages.KEY, "sample", "prompt", "usable"])


def test_candidates_are_the_greedy_description_then_distinct_usable_samples():
    writer = _Writer(
        greedy={("a", 0): "g0", ("a", 1): "!garbled"},
        samples={("a", 0): ["g0", "!bad", "s1", "s2", "s3"], ("a", 1): ["t1", "t1", "t2"]},
    )
    cfg = Config().model_copy(update={"render": Config().render.model_copy(update={"candidates": 3})})
    groups = pd.DataFrame({"product_id": ["a", "a"], "group_id": [0, 1]})
    rows, unusable = stages.candidates_for(writer, groups, {"profiles": None, "products": None}, cfg, seed=1)
    assert rows.groupby("group_id")["prompt"].agg(list).to_dict() == {0: ["g0", "s1", "s2"], 1: ["t1", "t2"]}
    assert rows.groupby("group_id")["candidate"].agg(list).to_dict() == {0: [0, 1, 2], 1: [0, 1]}
    # The unusable ones written are counted: a sample of group 0 and group 1's greedy description.
    assert unusable == 2


def test_best_of_n_takes_the_top_score_and_skips_failed_images():
    rows = pd.DataFrame(
        {
            "product_id": ["a"] * 3 + ["b"] * 2,
            "group_id": [0] * 5,
            "candidate": [0, 1, 2, 0, 1],
            "grm_score": [0.1, 0.9, 0.5, np.nan, np.nan],
            "image_uri": ["x", None, "y", "z", "w"],
        }
    )
    assert stages.select_best(rows).tolist() == [False, False, True, True, False]


def test_a_killed_write_leaves_no_file_under_the_real_name(tmp_path, monkeypatch):
    import fsspec.implementations.local as local

    target = str(tmp_path / "out" / "0.png")

    def dies_halfway(self, path, value, **kwargs):
        Path(path).write_bytes(value[: len(value) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(local.LocalFileSystem, "pipe_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        artifacts.write_atomically(target, b"x" * 1000)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_night_without_a_generator_is_skipped_saying_why(lakehouse, run_stage):
    out = run_stage(stages.generate_creatives, lakehouse, DS - dt.timedelta(days=2))
    assert out.skipped == "no osmf-gmllm for ds=2026-11-01 (train_group_dpo registered none yet)"


def test_an_unreadable_product_image_fails_naming_the_product_and_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(StageError, match=r"product p9: cannot read its image .*broken.png"):
        stages._cut_out("p9", str(tmp_path / "broken.png"), ImageLimits.of(Config()))


def test_osmf_models_build_tiny_builds_the_folders_the_stages_load(lakehouse, tmp_path):
    from typer.testing import CliRunner

    from osmf_lib.cli import app
    from osmf_lib.render.pipeline import renderer_folders

    config = tmp_path / "night.yaml"
    config.write_text(lakehouse.to_yaml())
    built = CliRunner().invoke(app, ["--config", str(config), "models", "build-tiny", "--ds", DS.isoformat()])
    assert built.exit_code == 0, built.output
    renderer = built.output.split("tiny renderer -> ")[1].strip()
    assert Path(renderer) == renderer_folders(lakehouse, library_of(lakehouse))[0]
    language_model = Path(built.output.split(f"tiny language model for ds={DS} -> ")[1].split("\n")[0])
    assert (language_model / "config.json").exists() and (Path(renderer) / "controlnet").is_dir()
    bad = CliRunner().invoke(app, ["--config", str(config), "models", "build-tiny", "--ds", "03/11/2026"])
    assert bad.exit_code == 1 and "--ds must be an ISO date" in bad.output


def test_a_night_whose_every_description_is_unusable_leaves_an_empty_partition(
    spark, lakehouse, run_stage, monkeypatch, tmp_path
):
    garbled = collections.defaultdict(lambda: "!garbled"), collections.defaultdict(lambda: ["!garbled"])
    monkeypatch.setattr(stages, "load_gmllm", lambda *_: _Writer(*garbled))
    stored = Path(GENERATED_CREATIVES.location(lakehouse))
    shutil.move(stored, tmp_path / "stored")  # as on a night before any was rendered; put back after
    try:
        out = run_stage(stages.generate_creatives, lakehouse)
        assert out.written == {GENERATED_CREATIVES.name: 0} and out.metrics["unusable_prompts"] > 0
        assert tables.exists(spark, GENERATED_CREATIVES, lakehouse) and _rows(spark, lakehouse).empty
    finally:
        shutil.rmtree(stored, ignore_errors=True)
        shutil.move(tmp_path / "stored", stored)


def test_a_product_id_that_is_a_path_never_leaves_the_nights_folder():
    # Ingest refuses such ids (tests/test_ingest.py); this is the defence behind it.
    with pytest.raises(artifacts.UnsafePath, match="'../../outside' is no name under"):
        product_folder(Config(), DS, "../../outside")
    assert product_folder(Config(), DS, "p-1").endswith("/2026-11-03/p-1")
