import datetime as dt

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
