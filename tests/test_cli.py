import datetime as dt
import json

import yaml
from pyspark.sql import Row
from typer.testing import CliRunner

from osmf_lib import tables
from osmf_lib.cli import app
from osmf_lib.tables import TABLES

runner = CliRunner()


def _cli(cfg, *args):
    root = ["--set", f"lakehouse.root={cfg.lakehouse.root}", "--set", f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}"]
    return runner.invoke(app, [*root, *args])


def test_config_show_prints_the_resolved_layers():
    result = runner.invoke(app, ["--set", "grouping.k_max=4", "config", "show"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["grouping"]["k_max"] == 4
    assert shown["models"]["profile"] == "tiny"


def test_config_get_prints_one_value():
    result = runner.invoke(app, ["--set", "spark.master=local[3]", "config", "get", "spark.master"])
    assert (result.exit_code, result.output.strip()) == (0, "local[3]")


def test_config_errors_exit_non_zero_with_the_key():
    bad = runner.invoke(app, ["--set", "grouping.k_max=x", "config", "show"])
    assert bad.exit_code == 2 and "grouping.k_max" in bad.output
    unknown = runner.invoke(app, ["config", "get", "spark.nope"])
    assert unknown.exit_code == 1 and "unknown config key 'spark.nope'" in unknown.output


def test_sql_queries_lakehouse_tables(spark, cfg):
    df = spark.createDataFrame(
        [
            Row(
                product_id="p1",
                title="Silk lipstick",
                category="cosmetics",
                price_band="mid",
                image_uri="/images/p1.png",
                updated_ds=dt.date(2026, 11, 1),
            )
        ]
    )
    tables.merge(spark, df, TABLES["products"], cfg)

    shown = _cli(cfg, "sql", "show tables")
    assert shown.exit_code == 0, shown.output
    assert "products" in shown.output

    counted = _cli(cfg, "sql", "SELECT category, count(*) AS n FROM products GROUP BY category")
    assert counted.exit_code == 0, counted.output
    assert "cosmetics" in counted.output and "(1 row)" in counted.output


def test_sql_limit_says_more_rows_exist(spark, cfg):
    result = _cli(cfg, "sql", "SELECT id FROM range(5)", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "(2 rows (more not shown; raise --limit))" in result.output


def test_sql_errors_are_one_line(spark, cfg):
    result = _cli(cfg, "sql", "SELECT * FROM no_such_table")
    assert result.exit_code == 1
    assert "query failed" in result.output and "no_such_table" in result.output


def test_tables_list_names_every_contract(cfg):
    result = _cli(cfg, "tables", "list")
    assert result.exit_code == 0
    assert all(name in result.output for name in TABLES)


def test_tables_ddl_regenerates_the_committed_files(tmp_path):
    from osmf_lib.cli import DDL_FOLDER

    result = runner.invoke(app, ["tables", "ddl", "--out", str(tmp_path)])
    assert result.exit_code == 0
    for generated in tmp_path.glob("*.sql"):
        assert generated.read_text() == (DDL_FOLDER / generated.name).read_text(), (
            f"sql/tables/{generated.name} is stale: run `osmf tables ddl`"
        )


def test_where_lists_outputs(cfg):
    result = _cli(cfg, "where")
    assert result.exit_code == 0
    assert cfg.lakehouse.root in result.output and "make mlflow-ui" in result.output


def test_export_pairs_writes_dpo_lines_for_one_split(spark, cfg, tmp_path):
    night = dt.date(2026, 11, 3)
    pair = dict(
        group_id=0,
        chosen_creative_id="c1",
        rejected_creative_id="c2",
        chosen_prompt="on a beach at dawn",
        rejected_prompt="in a grey office",
        chosen_ctr=0.12,
        rejected_ctr=0.10,
        confidence=0.93,
        conflict=True,
        paag_version="osmf-paag/1",
        groups_ds=night,
        ds=night,
    )
    rows = [
        Row(product_id="p1", split="train", **pair),
        Row(product_id="p2", split="train", **pair),  # not in products: named by its id
        Row(product_id="p3", split="test", **pair),
    ]
    table = TABLES["group_preference_pairs"]
    tables.overwrite_partition(spark, spark.createDataFrame(rows).select(*table.column_names), table, cfg, night)
    profile = Row(
        product_id="p1",
        group_id=0,
        k=1,
        size=10,
        silhouette=None,
        centroid=[0.0],
        anchors=None,
        attribute_summary=None,
        description="women 25-34",
        paag_version="osmf-paag/1",
        ds=night,
    )
    profiles = TABLES["group_profiles"]
    tables.overwrite_partition(spark, spark.createDataFrame([profile], profiles.schema()), profiles, cfg, night)
    product = Row(
        product_id="p1", title="Silk lipstick", category="cosmetics", price_band=None, image_uri=None, updated_ds=night
    )
    products = TABLES["products"]
    tables.merge(spark, spark.createDataFrame([product], products.schema()), products, cfg, ds=night)

    out = tmp_path / "exports" / "train.jsonl"
    result = _cli(cfg, "export-pairs", "--ds", "2026-11-03", "--split", "train", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "2 train pairs of ds=2026-11-03" in result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["product_id"] for line in lines] == ["p1", "p2"]
    assert lines[0] == {
        "prompt": "Describe the background of an ad for Silk lipstick (cosmetics), shown to women 25-34.",
        "chosen": "on a beach at dawn",
        "rejected": "in a grey office",
        "product_id": "p1",
        "group_id": 0,
        "conflict": True,
        "confidence": 0.93,
        "chosen_creative_id": "c1",
        "rejected_creative_id": "c2",
    }
    assert lines[1]["prompt"] == "Describe the background of an ad for p2, shown to group 0."
    assert [p.name for p in out.parent.iterdir()] == ["train.jsonl"]  # no partial file left

    bad = _cli(cfg, "export-pairs", "--ds", "2026-11-03", "--split", "holdout", "--out", str(out))
    assert bad.exit_code == 1 and "--split must be one of train, validation, test" in bad.output
