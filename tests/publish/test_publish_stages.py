"""evaluate_and_publish on the small lakehouse whose groups want opposite backgrounds, with a
night of rendered candidates laid out as generate_creatives leaves them."""

from __future__ import annotations

import base64
import datetime as dt
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from osmf_lib import artifacts, browser, tables
from osmf_lib.cli import app
from osmf_lib.config import Config
from osmf_lib.job import JobContext
from osmf_lib.publish.report import rebuild, report_uri
from osmf_lib.publish.stages import KEY, evaluate_and_publish
from osmf_lib.render import CONTACT_SHEET, product_folder
from osmf_lib.serving import coverage
from osmf_lib.tables import (
    EVAL_METRICS,
    GENERATED_CREATIVES,
    GROUP_CREATIVE_CTR,
    GROUP_PROFILES,
    IMPRESSIONS,
    SERVING_CREATIVES,
    USER_GROUPS,
)

DS = dt.date(2026, 11, 3)  # the night of make_group_lakehouse
# (product, group) -> the candidates' GRM scores; None: the image came out blank.
CANDIDATES = {("p00", 0): [0.2, 0.9], ("p00", 1): [0.5, None], ("p01", 0): [None, None], ("p01", 1): [0.1, 0.3]}


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _generated(cfg) -> pd.DataFrame:
    """generate_creatives' rows and files for two products: p00 fully rendered, p01's group 0 blank."""
    rows = []
    for (product_id, group_id), scores in CANDIDATES.items():
        folder = product_folder(cfg, DS, product_id)
        for candidate, score in enumerate(scores):
            uri = None if score is None else artifacts.join(folder, str(group_id), f"{candidate}.png")
            if uri:
                artifacts.write_atomically(uri, _png((40 * candidate, 90, 160)))
            rows.append(
                {
                    "product_id": product_id,
                    "group_id": group_id,
                    "candidate": candidate,
                    "prompt": f"background {candidate} for {product_id}/{group_id}",
                    "seed": candidate,
                    "image_uri": uri,
                    "grm_score": score,
                    "gmllm_version": "osmf-gmllm/3",
                    "grm_version": "osmf-grm/2",
                    "ds": DS,
                }
            )
    for product_id in ("p00", "p01"):
        artifacts.write_atomically(artifacts.join(product_folder(cfg, DS, product_id), CONTACT_SHEET), _png((9, 9, 9)))
    frame = pd.DataFrame(rows)
    best = frame.dropna(subset=["grm_score"]).sort_values("grm_score").drop_duplicates(KEY, keep="last").index
    return frame.assign(selected=frame.index.isin(best))


def _groups_of_a_trained_paag(spark, cfg) -> None:
    """Train PAAG on the lakehouse's log and make it the night's champion (version 1, the version
    the groups name), and put each group's centroid at its members' mean embedding: what the
    night's osmf-serving needs to place anyone."""
    import mlflow

    from osmf_lib import promotion, tracking
    from osmf_lib.paag import embed, fit_paag, log_paag
    from osmf_lib.tables import CREATIVES, PRODUCTS, USERS

    users = tables.read(spark, USERS, cfg).toPandas()
    products = tables.read(spark, PRODUCTS, cfg).toPandas()
    log = tables.read(spark, IMPRESSIONS, cfg, ds=DS).toPandas().merge(users, on="user_id")
    trained = fit_paag(log, products, tables.read(spark, CREATIVES, cfg).toPandas(), cfg)
    with mlflow.start_run():
        version = tracking.register(log_paag(trained, cfg), "osmf-paag")
    promotion.crown("osmf-paag", version, DS)
    members = tables.read(spark, USER_GROUPS, cfg, ds=DS).toPandas().merge(users, on="user_id")
    members["embedding"] = list(embed(trained, members).astype("float64"))
    centroids = members.groupby(KEY)["embedding"].apply(lambda e: np.mean(np.stack(e), axis=0).tolist())
    profiles = tables.read(spark, GROUP_PROFILES, cfg, ds=DS).drop("centroid").toPandas()
    profiles = profiles.merge(centroids.rename("centroid").reset_index(), on=KEY)
    assert (version, set(profiles["paag_version"])) == ("1", {"osmf-paag/1"})
    frame = spark.createDataFrame(profiles[GROUP_PROFILES.column_names], GROUP_PROFILES.schema())
    tables.overwrite_partition(spark, frame, GROUP_PROFILES, cfg, DS)


@pytest.fixture(scope="module")
def night(spark, make_group_lakehouse, run_stage, tmp_path_factory):
    cfg = make_group_lakehouse("publish", f"render.artifacts={tmp_path_factory.mktemp('creatives')}", "paag.epochs=2")
    _groups_of_a_trained_paag(spark, cfg)
    generated = _generated(cfg)
    frame = spark.createDataFrame(generated[GENERATED_CREATIVES.column_names], GENERATED_CREATIVES.schema())
    tables.overwrite_partition(spark, frame, GENERATED_CREATIVES, cfg, DS)
    result = run_stage(evaluate_and_publish, cfg)
    return cfg, generated, result


def _served(spark, cfg) -> pd.DataFrame:
    """Every row of the night's serving_creatives, by (product, group, creative)."""
    return tables.read(spark, SERVING_CREATIVES, cfg, ds=DS).toPandas().set_index([*KEY, "creative_id"]).sort_index()


def _best(spark, cfg) -> pd.DataFrame:
    """The groups' best creatives, by (product, group)."""
    served = _served(spark, cfg)
    return served[served["selected"]].reset_index().set_index(KEY)


def test_every_group_is_served_its_best_render_or_else_its_best_logged_creative(spark, night):
    cfg, generated, result = night
    served = _best(spark, cfg)
    targets = tables.read(spark, GROUP_PROFILES, cfg, ds=DS).toPandas().set_index(KEY).sort_index()
    assert served.index.equals(targets.index)
    chosen = generated[generated["selected"]].set_index(KEY)
    mine = served.loc[chosen.index]
    assert (mine["origin"] == "generated").all() and mine["creative_id"].str.match(r"^gen-[0-9a-f]{16}$").all()
    assert (
        mine["prompt"].tolist() == chosen["prompt"].tolist()
        and mine["image_uri"].tolist() == chosen["image_uri"].tolist()
    )
    assert mine["grm_score"].tolist() == chosen["grm_score"].tolist()
    assert (mine["gmllm_version"] == "osmf-gmllm/3").all() and (mine["grm_version"] == "osmf-grm/2").all()
    assert served["creative_id"].nunique() == len(served)
    # The rest, p01's blank group 0 among them, get the group's top logged creative by smoothed CTR.
    ctr = tables.read(spark, GROUP_CREATIVE_CTR, cfg, ds=DS).toPandas()
    top = ctr.sort_values(["ctr_smoothed", "creative_id"], ascending=[False, True]).drop_duplicates(KEY)
    logged = served[served["origin"] == "logged"]
    assert ("p01", 0) in logged.index and len(logged) == len(served) - len(chosen)
    assert logged["creative_id"].to_dict() == top.set_index(KEY)["creative_id"].loc[logged.index].to_dict()
    assert logged["grm_score"].isna().all() and logged["gmllm_version"].isna().all()
    assert (served["groups_ds"] == DS).all()
    counted = result.metrics
    assert (counted["targets.all"], counted["served.generated"], counted["unserved.all"]) == (len(targets), 3, 0)
    assert counted["served.logged"] == len(targets) - 3
    assert result.written == {SERVING_CREATIVES.name: len(targets) + counted["explored.candidates"]}


def test_the_rest_of_a_groups_traffic_explores_its_other_rendered_candidates(spark, night):
    cfg, generated, result = night
    served = _served(spark, cfg).reset_index()
    explore = cfg.publish.explore_share
    assert served.groupby(KEY)["traffic_share"].sum().to_numpy() == pytest.approx(1.0)
    # p00/0 and p01/1 have a second rendered candidate: it gets the explored share. p00/1's only
    # other candidate came out blank, and the logged groups have none: the best gets everything.
    shares = served.set_index(KEY)["traffic_share"]
    for group in (("p00", 0), ("p01", 1)):
        mine = served.set_index(KEY).loc[[group]]
        assert sorted(mine["traffic_share"]) == pytest.approx([explore, 1 - explore])
        assert mine.loc[~mine["selected"], "prompt"].iat[0] in set(generated["prompt"])
    assert shares.loc[[("p00", 1)]].tolist() == [1.0] and shares.loc[[("p01", 0)]].tolist() == [1.0]
    assert result.metrics["explored.candidates"] == 2
    assert result.metrics["explore_share.all"] == pytest.approx(2 * explore / served["selected"].sum())


def test_the_night_records_what_it_served(spark, night):
    cfg, _, _ = night
    metrics = tables.read(spark, EVAL_METRICS, cfg, ds=DS).where("stage = 'publish'").toPandas()
    values = metrics.set_index(["metric", "slice"])["value"]
    assert values["served", "generated"] == 3 and values["unserved", "all"] == 0
    assert values["generated_share", "all"] == pytest.approx(3 / values["targets", "all"])
    # No simulated world behind this lakehouse: the oracle's part is a logged skip, not an error.
    assert tables.read(spark, EVAL_METRICS, cfg, ds=DS).where("stage = 'publish_oracle'").count() == 0


def test_a_rerun_gives_the_same_rows(spark, night, run_stage):
    cfg, _, _ = night
    before = _served(spark, cfg)
    run_stage(evaluate_and_publish, cfg)
    pd.testing.assert_frame_equal(_served(spark, cfg), before)


def test_an_ad_server_reads_a_users_creative_by_key(spark, night):
    cfg, generated, _ = night
    tables.register_views(spark, cfg)
    member = spark.sql("SELECT user_id FROM user_groups WHERE product_id = 'p00' AND group_id = 0").first()["user_id"]
    rows = spark.sql(f"SELECT * FROM serving_lookup WHERE user_id = '{member}' AND product_id = 'p00'").collect()
    mine = generated[(generated["product_id"] == "p00") & (generated["group_id"] == 0)]
    # The group's best and the candidate it explores, each with its share of the group's traffic.
    assert {(row["group_id"], row["image_uri"], row["selected"]) for row in rows} == {
        (0, uri, selected) for uri, selected in zip(mine["image_uri"], mine["selected"], strict=True)
    }
    assert sum(row["traffic_share"] for row in rows) == pytest.approx(1.0)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _report(cfg: Config) -> Path:
    return Path(report_uri(cfg, DS))


def test_the_report_shows_every_group_with_its_served_image(spark, night):
    cfg, generated, _ = night
    path = _report(cfg)
    assert path.exists() and path.parent == Path(cfg.render.artifacts) / DS.isoformat()
    page = _Page()
    page.feed(path.read_text())
    text = " ".join(page.text)
    assert "OSMF night 2026-11-03" in text and "Mug p00" in text and "Mug p11" in text
    # Rendered products first; each of their groups' served images and the contact sheets embedded.
    assert text.index("Mug p00") < text.index("Mug p11")
    rendered = generated[generated["selected"]]
    assert len(page.images) == len(rendered) + 2
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            assert max(image.size) <= 4 * cfg.publish.thumbnail
    assert "publish" in text and "generated_share" in text
    # What a person wants first comes first; the full metric table last.
    sections = [
        "Creatives",
        "Click-through rate by day",
        "Night over night",
        "Group-DPO per night",
        "Metrics by stage",
        "Products",
        "All metrics",
    ]
    assert [text.index(name) for name in sections] == sorted(text.index(name) for name in sections)
    assert "Members placed again by their attributes alone get their own group" in text
    assert "2026-11-04 has not been served and ingested yet" in text


def test_the_report_opens_in_a_real_browser_with_every_image_and_no_script_error(night):
    cfg, _, _ = night
    try:
        browser.find()
    except browser.BrowserMissing as missing:
        pytest.skip(f"no headless browser: {missing}")
    seen = browser.render(_report(cfg).read_text())
    assert (seen.broken_images, seen.errors) == ((), ())
    # The stage saw the same and left its screenshot beside the report.
    with Image.open(_report(cfg).with_suffix(".png")) as image:
        assert image.width == browser.WIDTH and image.height > 800


def test_the_browser_check_sees_a_broken_image_and_a_script_error():
    try:
        browser.find()
    except browser.BrowserMissing as missing:
        pytest.skip(f"no headless browser: {missing}")
    seen = browser.render('<html><body><img src="gone.png"><script>throw new Error("boom")</script></body></html>')
    assert seen.broken_images == ("gone.png",)
    assert any("boom" in error for error in seen.errors) and any("gone.png" in error for error in seen.errors)
    with Image.open(io.BytesIO(seen.png)) as image:
        assert image.size[0] == browser.WIDTH


def test_osmf_report_prints_where_the_report_is(night):
    cfg, _, _ = night
    runner = CliRunner()
    found = runner.invoke(app, ["--set", f"render.artifacts={cfg.render.artifacts}", "report", "--ds", "2026-11-03"])
    assert (found.exit_code, found.output.strip()) == (0, str(_report(cfg)))
    missing = runner.invoke(app, ["--set", f"render.artifacts={cfg.render.artifacts}", "report", "--ds", "2026-11-04"])
    assert missing.exit_code == 1 and "no report for ds=2026-11-04" in missing.output


def test_osmf_report_rebuild_reads_the_configured_registry(night, tmp_path, monkeypatch):
    import mlflow

    cfg, _, _ = night
    # A fresh process starts pointed at MLflow's default store, not the configured one.
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")
    settings = [
        f"lakehouse.root={cfg.lakehouse.root}",
        f"render.artifacts={cfg.render.artifacts}",
        f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}",
    ]
    args = [arg for setting in settings for arg in ("--set", setting)]
    rebuilt = CliRunner().invoke(app, [*args, "report", "--ds", "2026-11-03", "--rebuild"])
    assert (rebuilt.exit_code, rebuilt.output.strip()) == (0, str(_report(cfg))), rebuilt.output
    page = _Page()
    page.feed(_report(cfg).read_text())
    assert "osmf-serving@champion: v1" in " ".join(page.text)


def test_the_night_registers_its_serving_model_pinned_to_the_night(spark, night, run_stage):
    from mlflow import MlflowClient

    from osmf_lib import promotion

    cfg, _, result = night
    client = MlflowClient()
    (version,) = client.search_model_versions("name = 'osmf-serving'")
    assert client.get_model_version_by_alias("osmf-serving", "champion").version == version.version
    assert version.tags[promotion.TAG_CHAMPION_FROM] == version.tags[promotion.TAG_TRAINED_FOR] == DS.isoformat()
    assert "the serving model of night 2026-11-03 (groups from osmf-paag/1)" in version.tags[promotion.TAG_DECISION]
    assert result.model == f"osmf-serving/{version.version}"
    metrics = tables.read(spark, EVAL_METRICS, cfg, ds=DS).where("stage = 'serving'").toPandas()
    placed = metrics.set_index("metric")["value"]
    assert placed["member_agreement_rows"] == 12 * 40 and 0 <= placed["member_agreement"] <= 1
    # A rerun of the night on the same rows serves with the same version.
    run_stage(evaluate_and_publish, cfg)
    assert len(client.search_model_versions("name = 'osmf-serving'")) == 1


def test_the_closed_loop_view_splits_the_next_days_traffic_into_served_and_control(spark, night):
    from osmf_lib.serving.bulk import assign_day
    from osmf_lib.tables import SERVING_ASSIGNMENTS, USERS

    cfg, _, _ = night
    day = DS + dt.timedelta(days=1)
    # Tomorrow's requests: two members of p00's groups (both served generated creatives), a
    # newcomer placed by the attributes of a member of group 0, and p02 (served logged creatives).
    members = tables.read(spark, USER_GROUPS, cfg, ds=DS).where("product_id = 'p00'").toPandas()
    user, other = members.loc[members["group_id"] == 0, "user_id"].iat[0], "u100"
    attributes = tables.read(spark, USERS, cfg).where(f"user_id = '{user}'").drop("updated_ds").toPandas()
    requests = pd.concat(
        [
            attributes.assign(product_id="p00"),
            attributes.assign(product_id="p00", user_id=other),
            attributes.assign(product_id="p00", user_id="newcomer"),
            attributes.assign(product_id="p02"),
        ]
    )
    version = assign_day(spark, cfg, DS, day, spark.createDataFrame(requests))
    answered = tables.read(spark, SERVING_ASSIGNMENTS, cfg, version=version, ds=day).toPandas()
    answer = answered.set_index(["user_id", "product_id"])
    assert answer.loc[(user, "p00"), "reason"] == "member" and answer.loc[("newcomer", "p00"), "reason"] == "assigned"
    assert (answered["groups_ds"] == DS).all() and answer.loc[(user, "p02"), "origin"] == "logged"
    mine, theirs, new = (answer.loc[(u, "p00"), "creative_id"] for u in (user, other, "newcomer"))
    rows = [
        (user, "p00", mine, True),
        (user, "p00", mine, False),
        (user, "p00", mine, False),
        (user, "p00", "p00-c1", False),
        (other, "p00", "p00-c2", True),
        (other, "p00", theirs, True),
        ("newcomer", "p00", new, False),
        ("newcomer", "p00", "p00-c3", True),
        (user, "p02", "p02-c0", True),
    ]  # p02 was served a logged creative: not in the test
    frame = pd.DataFrame(rows, columns=["user_id", "product_id", "creative_id", "clicked"]).assign(
        event_id=[f"next{i}" for i in range(len(rows))], ts=pd.Timestamp(day), position=1, source_file="t", ds=day
    )
    tables.overwrite_partition(
        spark, spark.createDataFrame(frame[IMPRESSIONS.column_names], IMPRESSIONS.schema()), IMPRESSIONS, cfg, day
    )
    tables.register_views(spark, cfg)
    arms = spark.table("closed_loop_ab").toPandas().set_index(["audience", "arm"])
    assert (arms["ds"] == day).all()
    counts = arms[["impressions", "clicks"]].astype(int).apply(list, axis=1).to_dict()
    assert counts == {
        ("all", "control"): [3, 2],
        ("all", "served"): [5, 2],
        ("members", "control"): [2, 1],
        ("members", "served"): [4, 2],
        ("newcomers", "control"): [1, 1],
        ("newcomers", "served"): [1, 0],
    }

    # What ingestion records for the day, and the night's report written again to show it.
    covered = {(m.metric, m.slice): m.value for m in coverage.coverage(spark, cfg, day)}
    assert covered["impressions", "all"] == covered["impressions", "published"] == len(rows)
    assert covered["coverage", "creative"] == 1.0 and covered["coverage", "generated"] == pytest.approx(8 / 9)
    assert covered["reason_share", "member"] == pytest.approx(7 / 9)
    tables.write_metrics(spark, cfg, day, coverage.STAGE, coverage.coverage(spark, cfg, day), "test")
    page = _Page()
    page.feed(Path(rebuild(JobContext("report", cfg, DS, "test"))).read_text())
    text = " ".join(" ".join(page.text).split())
    assert (
        "2026-11-04's traffic, answered by this night's osmf-serving: of the impressions on products it "
        "published, 100.0% got a creative and 88.9% a generated one" in text
    )
