from pathlib import Path

import pytest
from pydantic import ValidationError

from osmf_lib.config import PROJECT_ROOT, Config, ConfigError, load_config


def _load(tmp_path: Path, base: str | None = None, **kwargs) -> Config:
    base_file = None
    if base is not None:
        base_file = tmp_path / "osmf.yaml"
        base_file.write_text(base)
    kwargs.setdefault("environ", {})
    return load_config(base_file=base_file, **kwargs)


def test_defaults_cover_every_stage_section():
    cfg = load_config(base_file=None, environ={})
    sections = set(Config.model_fields)
    assert {"lakehouse", "spark", "mlflow", "models", "gpu", "synth", "ingest"} <= sections
    assert {"paag", "grouping", "pairs", "grm", "gmllm", "group_dpo", "render", "evaluate"} <= sections
    assert cfg.models.profile == "tiny"
    assert (cfg.grouping.k_min, cfg.grouping.k_max) == (2, 5)
    assert cfg.grouping.anchor_ratio == (2, 3, 5)


def test_layers_apply_in_order(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("grouping:\n  k_max: 4\n  min_group_size: 11\nspark:\n  master: local[3]\n")
    cfg = _load(
        tmp_path,
        base="grouping:\n  k_max: 3\n  silhouette_sample: 500\n",
        config_file=extra,
        environ={"OSMF_GROUPING__MIN_GROUP_SIZE": "12", "OSMF_SPARK__MASTER": "local[4]"},
        overrides=["spark.master=local[1]"],
    )
    assert cfg.grouping.silhouette_sample == 500  # base file
    assert cfg.grouping.k_max == 4  # --config beats the base file
    assert cfg.grouping.min_group_size == 12  # env beats --config, typed from text
    assert cfg.spark.master == "local[1]"  # CLI beats env


def test_a_deployment_names_its_files_once_in_osmf_config(tmp_path):
    (tmp_path / "site.yaml").write_text("grouping:\n  k_max: 4\n  min_group_size: 11\nspark:\n  master: local[3]\n")
    (tmp_path / "gpu.yaml").write_text("grouping:\n  k_max: 3\n")
    (tmp_path / "cli.yaml").write_text("spark:\n  master: local[2]\n")
    cfg = _load(
        tmp_path,
        base="grouping:\n  k_max: 5\n  silhouette_sample: 500\n",
        config_file=tmp_path / "cli.yaml",
        environ={"OSMF_CONFIG": f"{tmp_path}/site.yaml, {tmp_path}/gpu.yaml"},
    )
    assert cfg.grouping.silhouette_sample == 500  # base file
    assert (cfg.grouping.k_max, cfg.grouping.min_group_size) == (3, 11)  # later deployment files win
    assert cfg.spark.master == "local[2]"  # --config beats the deployment's files


def test_a_missing_deployment_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path}/nope.yaml"):
        _load(tmp_path, environ={"OSMF_CONFIG": f"{tmp_path}/nope.yaml"})


def test_relative_deployment_files_resolve_against_the_checkout(tmp_path):
    cfg = _load(tmp_path, environ={"OSMF_CONFIG": "conf/profiles/cluster.yaml"})
    assert cfg.gpu.launcher == "kubernetes"


def test_env_and_cli_values_are_typed_like_yaml(tmp_path):
    cfg = _load(tmp_path, environ={"OSMF_SPARK__SHOW_PROGRESS": "false"}, overrides=["grouping.anchor_ratio=[1, 2, 3]"])
    assert cfg.spark.show_progress is False
    assert cfg.grouping.anchor_ratio == (1, 2, 3)


def test_unrelated_osmf_variables_are_ignored(tmp_path):
    assert _load(tmp_path, environ={"OSMF_HOME": "/somewhere"}) == _load(tmp_path)


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ({"base": "grouping:\n  kmax: 3\n"}, "config key 'grouping.kmax' (from file"),
        (
            {"environ": {"OSMF_GROUPING__KMAX": "3"}},
            "config key 'grouping.kmax' (from env OSMF_GROUPING__KMAX): unknown key",
        ),
        ({"overrides": ["grouping.kmax=3"]}, "config key 'grouping.kmax' (from --set grouping.kmax): unknown key"),
        (
            {"overrides": ["nosuchsection.key=1"]},
            "config key 'nosuchsection' (from --set nosuchsection.key): unknown key",
        ),
    ],
)
def test_unknown_keys_fail_naming_key_and_layer(tmp_path, layer, expected):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, **layer)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "grouping.k_max=abc",
            "config key 'grouping.k_max' (from --set grouping.k_max): Input should be a valid integer",
        ),
        ("models.profile=huge", "config key 'models.profile'"),
        ("render.product_scale=1.5", "config key 'render.product_scale'"),
        ("pairs.min_confidence=2", "config key 'pairs.min_confidence'"),
        ("grouping.k_min=6", "k_min (6) must not exceed k_max (5)"),
        ("pairs.ratio_max=1.2 pairs.ratio_min=1.3", "ratio_min (1.3) must be below ratio_max (1.2)"),
    ],
)
def test_bad_values_fail_naming_key_and_reason(tmp_path, override, expected):
    with pytest.raises(ConfigError, match="invalid configuration") as err:
        _load(tmp_path, overrides=override.split())
    assert expected in str(err.value)


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, overrides=["grouping.k_max=x", "spark.nope=1"])
    assert "grouping.k_max" in str(err.value) and "spark.nope" in str(err.value)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        _load(tmp_path, config_file=tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("grouping: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        _load(tmp_path, config_file=broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, not list"):
        _load(tmp_path, config_file=listing)


def test_set_needs_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match="--set expects key=value, got 'grouping.k_max'"):
        _load(tmp_path, overrides=["grouping.k_max"])


def test_value_where_a_section_is_expected(tmp_path):
    with pytest.raises(ConfigError, match="config key 'grouping'"):
        _load(tmp_path, overrides=["grouping=3"])
    with pytest.raises(ConfigError, match="'k_max' is not a section"):
        _load(tmp_path, overrides=["grouping.k_max=3", "grouping.k_max.deeper=3"])


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(ValidationError):
        cfg.grouping.k_max = 3  # type: ignore[misc]


def test_local_paths_resolve_against_the_project_root_and_uris_stay(tmp_path):
    cfg = _load(tmp_path, overrides=["lakehouse.root=var/x", "lakehouse.landing=s3a://bucket/landing"])
    assert cfg.lakehouse.root == str(PROJECT_ROOT / "var" / "x")
    assert cfg.lakehouse.landing == "s3a://bucket/landing"
    assert cfg.mlflow.tracking_uri == f"sqlite:///{PROJECT_ROOT}/var/mlflow/mlflow.db"
    assert (
        _load(tmp_path, overrides=["mlflow.artifact_root=mlflow-artifacts:/"]).mlflow.artifact_root
        == "mlflow-artifacts:/"
    )


def test_get_reads_dotted_keys():
    cfg = Config()
    assert cfg.get("spark.master") == "local[*]"
    assert cfg.get("grouping").k_max == 5
    with pytest.raises(ConfigError, match="unknown config key 'spark.nope'"):
        cfg.get("spark.nope")


def test_yaml_round_trip(tmp_path):
    cfg = _load(tmp_path, overrides=["grouping.k_max=4"])
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(cfg.to_yaml())
    assert _load(tmp_path, config_file=dumped) == cfg


def test_committed_profiles_are_valid():
    for profile in sorted((PROJECT_ROOT / "conf").rglob("*.yaml")):
        load_config(config_file=profile, environ={})
