"""PAAG: product-aware user embeddings trained on the simulated world's clicks, and osmf-paag in MLflow."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from osmf_lib import artifacts, tracking
from osmf_lib.config import Config
from osmf_lib.job import main
from osmf_lib.paag import (
    USER_ATTRIBUTES,
    PaagError,
    TrainedPaag,
    embed,
    fit_paag,
    load_paag,
    log_paag,
    validation_users,
)
from osmf_lib.paag.model import PRODUCT, UNKNOWN, PaagNet
from osmf_lib.synth import World, build_world, write_landing

# Weights come from installed packages or are built locally; a hub lookup would be a bug.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Two epochs over this many impressions take seconds on one core and separate clicks clearly.
TRAIN_ROWS = 50_000
SETTINGS = ("gpu.device=cpu", "paag.epochs=2", "paag.validation_fraction=0.25", "paag.inference_batch_size=1024")


def impressions(world: World, n: int, seed: int = 0) -> pd.DataFrame:
    """Day-0 impressions in the layout train_paag reads: ids, click label and user attributes."""
    drawn = world.traffic(0).draw(n, np.random.default_rng(seed))
    frame = world.users.iloc[drawn.user][["user_id", *USER_ATTRIBUTES]].reset_index(drop=True)
    frame["product_id"] = world.products["product_id"].to_numpy()[drawn.product]
    frame["creative_id"] = world.creatives["creative_id"].to_numpy()[drawn.creative]
    frame["clicked"] = drawn.clicked
    return frame


def pairs_of(users: pd.DataFrame, products: pd.DataFrame) -> pd.DataFrame:
    """Every (product, user) pair, with the product's text and image columns the pyfunc takes."""
    cross = products.merge(users[["user_id", *USER_ATTRIBUTES]], how="cross")
    # As Spark hands them over: arrays, not the world's tuples (MLflow's schema check refuses those).
    cross["interests"] = cross["interests"].map(list)
    return cross.rename(
        columns={"title": "product_title", "category": "product_category", "image_uri": "product_image_uri"}
    )[["product_id", "user_id", *USER_ATTRIBUTES, "product_title", "product_category", "product_image_uri"]]


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(7, "tiny")


@pytest.fixture(scope="module")
def products(world: World, make_cfg: Callable[..., Config], tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Every product with its cut-out PNG; the later arrivals are never in the training impressions."""
    landing = tmp_path_factory.mktemp("landing")
    write_landing(make_cfg(), out=landing, scale="tiny", days=3)
    catalog = world.products[["product_id", "title", "category", "since"]].copy()
    catalog["image_uri"] = [str(landing / "images" / "products" / f"{pid}.png") for pid in catalog["product_id"]]
    return catalog


@pytest.fixture(scope="module")
def examples(world: World) -> pd.DataFrame:
    return impressions(world, TRAIN_ROWS)


@pytest.fixture(scope="module")
def train_cfg(make_cfg: Callable[..., Config]) -> Config:
    return make_cfg(*SETTINGS)


@pytest.fixture(scope="module")
def trained(examples: pd.DataFrame, products: pd.DataFrame, world: World, train_cfg: Config) -> TrainedPaag:
    return fit_paag(examples, products, world.creatives, train_cfg)


@pytest.fixture(scope="module")
def small(world: World, products: pd.DataFrame, make_cfg: Callable[..., Config]) -> Callable[..., TrainedPaag]:
    """A quick training on a few thousand impressions, for properties that need no good model."""

    def train(*overrides: str, product_aware: bool = True, catalog: pd.DataFrame = products) -> TrainedPaag:
        cfg = make_cfg(*SETTINGS, "paag.epochs=1", *overrides)
        return fit_paag(impressions(world, 4_000, seed=1), catalog, world.creatives, cfg, product_aware)

    return train


def test_embeddings_have_the_configured_size(trained: TrainedPaag, world: World, products) -> None:
    pairs = pairs_of(world.users.head(50), products[products["since"] == 0].head(3))
    vectors = embed(trained, pairs)
    assert vectors.shape == (150, 32) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    # Row-aligned: embedding a shuffled frame shuffles the rows, nothing else.
    order = np.random.default_rng(0).permutation(len(pairs))
    np.testing.assert_allclose(embed(trained, pairs.iloc[order]), vectors[order], atol=1e-6)


def test_the_same_seed_trains_the_same_model_and_another_seed_does_not(small, world: World, products) -> None:
    pairs = pairs_of(world.users.head(20), products[products["since"] == 0].head(2))
    first, again, other = small(), small(), small("paag.seed=1")
    np.testing.assert_array_equal(embed(first, pairs), embed(again, pairs))
    assert first.metrics == again.metrics
    assert not np.allclose(embed(first, pairs), embed(other, pairs), atol=1e-3)


def test_only_the_product_aware_model_embeds_a_user_differently_per_product(small, world: World, products) -> None:
    live = products[products["since"] == 0]
    two = pd.concat([live[live["category"] == "cosmetics"].head(1), live[live["category"] == "electronics"].head(1)])
    pairs = pairs_of(world.users.head(30), two)
    for product_aware in (True, False):
        vectors = embed(small(product_aware=product_aware), pairs).reshape(2, 30, -1)
        assert np.allclose(vectors[0], vectors[1], atol=1e-6) != product_aware
        # Users still differ from each other either way.
        assert np.linalg.norm(vectors[0] - vectors[0].mean(0), axis=1).mean() > 1e-3


def test_training_lowers_the_loss_and_predicts_clicks_of_held_out_users(
    trained: TrainedPaag, examples, world: World
) -> None:
    metrics = trained.metrics
    assert metrics["val_loss"] < metrics["initial_val_loss"]
    assert trained.train_losses[1] < trained.train_losses[0]
    assert metrics["val_auroc"] > 0.55, metrics
    # Validation is by user: a quarter of the users, none of them seen in training.
    held_out = validation_users(examples["user_id"], 0.25, seed=0)
    assert set(examples["user_id"][held_out]).isdisjoint(examples["user_id"][~held_out])
    assert trained.validation_users == examples["user_id"][held_out].nunique()
    assert trained.train_rows + trained.validation_rows == len(examples)
    # Evaluation scores held-out impressions through the public API and gets the same AUROC.
    val = examples[held_out]
    predicted = trained.paag.click_probability(val, world.creatives)
    assert roc_auc_score(val["clicked"], predicted) == pytest.approx(metrics["val_auroc"], abs=1e-4)


def test_the_click_head_learns_a_bias_per_trained_product_and_none_for_others(trained: TrainedPaag) -> None:
    bias = trained.paag.net.product_bias.weight.detach().squeeze(-1)
    assert len(bias) == len(trained.paag.featurizer.vocab.values[PRODUCT]) + 1
    assert bias[UNKNOWN] == 0 and bias[1:].abs().min() > 0


def test_the_product_aware_net_starts_as_the_baseline(trained: TrainedPaag, world: World, products) -> None:
    """Both nets draw identical initial weights, and the product modulation starts at zero, so any
    difference between the two models' embeddings is learnt from clicks."""
    pairs = pairs_of(world.users.head(10), products[products["since"] == 0].head(2))
    rows = trained.paag.featurizer.rows(pairs)

    def build(product_aware: bool) -> PaagNet:
        torch.manual_seed(0)
        return PaagNet(replace(trained.paag.net.dims, product_aware=product_aware))

    aware, agnostic = build(True), build(False)
    for (name, weight), other in zip(aware.state_dict().items(), agnostic.state_dict().values(), strict=True):
        torch.testing.assert_close(weight, other, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(aware.embed(*rows.take(slice(None))), agnostic.embed(*rows.take(slice(None))))


def test_the_product_context_gradient_sums_in_the_same_order_every_time(
    trained: TrainedPaag, world: World, products
) -> None:
    """Many rows of a batch share a product's modulation, so its gradient is a sum over them: with
    two CPU threads adding into the same rows at once that sum came out in a different order on
    every run, and no two fresh processes trained the same PAAG at demo scale."""
    pairs = pairs_of(world.users.head(2_000), products[products["since"] == 0].head(2))
    # Shuffled as a training batch is: the two products' rows interleave in every thread's share.
    pairs = pairs.sample(frac=1.0, random_state=0)
    batch = trained.paag.featurizer.rows(pairs).take(slice(None))
    net = trained.paag.net
    upstream = torch.randn(len(pairs), net.dims.embedding_dim, generator=torch.Generator().manual_seed(0))

    def gradient() -> torch.Tensor:
        net.zero_grad(set_to_none=True)
        (net.embed(*batch) * upstream).sum().backward()
        return net.modulation.weight.grad.clone()

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = gradient()
        assert first.abs().sum() > 0
        for _ in range(5):
            torch.testing.assert_close(gradient(), first, rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)
        net.zero_grad(set_to_none=True)


def test_max_train_rows_caps_the_sample(small) -> None:
    capped = small("paag.max_train_rows=1000")
    assert capped.train_rows == 1000 and capped.validation_rows <= 334


def test_unseen_attribute_values_fall_back_to_unknown(trained: TrainedPaag, world: World, products) -> None:
    pairs = pairs_of(world.users.head(1), products.head(1))
    odd = pairs.assign(age_band="99+", gender=None, device=np.nan, interests=[["space travel"]])
    missing = pairs.assign(age_band=None, gender=None, device=None, interests=[["never seen"]])
    vectors = embed(trained, pd.concat([pairs, odd, missing]))
    assert np.isfinite(vectors).all()
    np.testing.assert_array_equal(vectors[1], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])
    empty = pairs.assign(interests=[None])
    assert np.isfinite(embed(trained, empty)).all()


def test_products_unseen_in_training_are_embedded_from_their_text_and_image(
    trained: TrainedPaag, examples, world: World, products
) -> None:
    late = products[products["since"] > 0].head(2)
    assert not set(late["product_id"]) & set(examples["product_id"])
    users = world.users.head(10)
    from_columns = embed(trained, pairs_of(users, late))
    pairs = pairs_of(users, late)[["product_id", "user_id", *USER_ATTRIBUTES]]
    np.testing.assert_allclose(embed(trained, pairs, products), from_columns, atol=1e-6)
    # A retitled product gets new features, not the cached ones.
    retitled = late.assign(title="Completely Different Thing")
    assert not np.allclose(embed(trained, pairs_of(users, retitled)), from_columns, atol=1e-4)


def test_a_product_without_features_or_a_readable_image_is_refused(
    trained: TrainedPaag, world: World, products, tmp_path: Path
) -> None:
    users = world.users.head(2)
    new = products.head(1).assign(product_id="p-new")
    with pytest.raises(PaagError, match="p-new.*title, category and image_uri"):
        embed(trained, pairs_of(users, new)[["product_id", "user_id", *USER_ATTRIBUTES]])
    gone = tmp_path / "gone.png"
    with pytest.raises(PaagError, match=f"product p-new: cannot read its image {gone}"):
        embed(trained, pairs_of(users, new.assign(image_uri=str(gone))))
    garbled = tmp_path / "garbled.png"
    garbled.write_text("not a png")
    with pytest.raises(PaagError, match=f"product p-new: cannot read its image {garbled}"):
        embed(trained, pairs_of(users, new.assign(image_uri=str(garbled))))
    with pytest.raises(PaagError, match=r"lack columns \['interests'\]"):
        embed(trained, pairs_of(users, products.head(1)).drop(columns="interests"))


def test_images_on_an_object_store_embed_as_the_same_files_on_disk(
    trained: TrainedPaag, world: World, products, object_store: str
) -> None:
    on_disk = products.head(3)
    # New ids: the features cached for the originals must not stand in for reading the copies.
    copies = on_disk.assign(product_id=[f"{pid}-copy" for pid in on_disk["product_id"]])
    copies["image_uri"] = [artifacts.join(object_store, "products", f"{pid}.png") for pid in copies["product_id"]]
    for local, stored in zip(on_disk["image_uri"], copies["image_uri"], strict=True):
        artifacts.write_atomically(stored, Path(local).read_bytes())
    users = world.users.head(4)
    np.testing.assert_array_equal(embed(trained, pairs_of(users, copies)), embed(trained, pairs_of(users, on_disk)))


def test_products_without_a_picture_are_trained_on_and_embedded_from_their_text_alone(
    small, world: World, products
) -> None:
    catalog = products.copy()
    catalog.loc[:2, "image_uri"] = [None, "", np.nan]
    trained = small(catalog=catalog)
    pairs = pairs_of(world.users.head(10), catalog.head(4))
    before = embed(trained, pairs).reshape(4, 10, -1)
    # However the image half of the modulation weighs the picture, it moves no pictureless product.
    net = trained.paag.net
    with torch.no_grad():
        torch.nn.init.normal_(net.modulation.weight[:, net.dims.hidden_dim :])
    after = embed(trained, pairs).reshape(4, 10, -1)
    np.testing.assert_array_equal(after[:3], before[:3])
    assert not np.allclose(after[3], before[3], atol=1e-3)
    assert trained.paag.unreadable_images == []


def test_an_unreadable_picture_fails_naming_product_and_file_unless_text_only_is_set(
    small, world: World, products, tmp_path: Path
) -> None:
    gone, garbled, bomb = tmp_path / "gone.png", tmp_path / "garbled.png", tmp_path / "bomb.png"
    garbled.write_text("not a png")
    Image.new("1", (2000, 2000)).save(bomb)  # 4 M pixels in a few KB
    catalog = products.copy()
    catalog.loc[:2, "image_uri"] = [str(gone), str(garbled), str(bomb)]
    limits = "images.max_pixels=1000000"
    with pytest.raises(PaagError, match=f"product {catalog['product_id'][0]}: cannot read its image {gone}: "):
        small(limits, catalog=catalog)

    trained = small(limits, "models.unreadable_image=text_only", catalog=catalog)
    assert trained.paag.unreadable_images == sorted(catalog["product_id"][:3])
    users = world.users.head(5)
    np.testing.assert_allclose(
        embed(trained, pairs_of(users, catalog.head(3))),
        embed(trained, pairs_of(users, catalog.head(3).assign(image_uri=None))),
        atol=1e-5,
    )


def test_a_paag_input_error_ends_the_job_with_one_line(
    examples, world: World, products, cfg: Config, tmp_path: Path, capsys
) -> None:
    gone = tmp_path / "gone.png"
    catalog = products.assign(image_uri=str(gone))
    settings = ["gpu.device=cpu", f"lakehouse.root={cfg.lakehouse.root}"]
    settings += [f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}", f"mlflow.artifact_root={cfg.mlflow.artifact_root}"]
    args = ["--ds", "2026-11-01", *(arg for setting in settings for arg in ("--set", setting))]
    with pytest.raises(SystemExit) as exit_:
        main("train_paag", lambda ctx: fit_paag(examples, catalog, world.creatives, ctx.cfg), args)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.match(f"osmf train_paag failed for ds=2026-11-01: product p\\d+: cannot read its image {gone}: ", last)


def test_training_refuses_examples_of_unknown_products(examples, products, world: World, train_cfg) -> None:
    with pytest.raises(PaagError, match="p00001"):
        fit_paag(examples, products[products["product_id"] != "p00001"], world.creatives, train_cfg)


def test_osmf_paag_round_trips_through_the_mlflow_registry(
    trained: TrainedPaag, cfg: Config, world: World, products, tmp_path: Path
) -> None:
    tracking.configure(cfg)
    with mlflow.start_run() as run:
        uri = log_paag(trained, cfg)
    version = tracking.register(uri, "osmf-paag")
    assert tracking.alias_version("osmf-paag", tracking.CHALLENGER) == version
    logged = mlflow.get_run(run.info.run_id).data
    assert logged.metrics["paag.val_auroc"] == pytest.approx(trained.metrics["val_auroc"])
    assert logged.params["paag.product_aware"] == "True"

    live = products[products["since"] == 0].head(3)
    pairs = pairs_of(world.users.head(40), live).assign(device=None)
    expected = embed(trained, pairs)
    model = mlflow.pyfunc.load_model("models:/osmf-paag@challenger")
    out = model.predict(pairs)
    np.testing.assert_allclose(np.stack(out["embedding"]), expected, atol=1e-5)

    # The torch-side loader, used from Spark UDFs, gives the same from several threads at once,
    # and embeds a product unseen in training even after its images moved.
    paag = load_paag("models:/osmf-paag@challenger")
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(paag.embed, np.array_split(pairs, 4)))
    np.testing.assert_allclose(np.concatenate(parts), expected, atol=1e-5)
    late = products[products["since"] > 0].head(1)
    moved = late.assign(image_uri=str(shutil.copy(late["image_uri"].iat[0], tmp_path / "moved.png")))
    np.testing.assert_allclose(
        paag.embed(pairs_of(world.users.head(5), moved)),
        embed(trained, pairs_of(world.users.head(5), late)),
        atol=1e-5,
    )
