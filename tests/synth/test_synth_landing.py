"""Landing files: the exact layout ingestion reads, reproducible bytes, and faults that add up."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from osmf_lib import artifacts
from osmf_lib.config import SYNTH_LINE_FAULTS, Config, load_config
from osmf_lib.synth import SCALES, LandingSummary, build_world, day_requests, write_landing
from osmf_lib.synth.backgrounds import paint_background
from osmf_lib.synth.landing import EVENT_KEYS, FAULT_CLASSES, MANIFEST_FILE, Serving, write_served_day
from osmf_lib.synth.oracle import Oracle
from osmf_lib.synth.vocab import CATEGORIES

START = date(2026, 11, 1)
DAYS = 3
TINY = SCALES["tiny"]
RATE = 0.01  # every fault class at once, each at 1%
DIM_KEYS = {
    "users": ["user_id", "age_band", "gender", "city_tier", "purchase_power", "occupation", "device", "interests"],
    "products": ["product_id", "title", "category", "price_band", "image_uri"],
    "creatives": ["creative_id", "product_id", "prompt", "image_uri", "origin"],
}


def _config(landing: Path, *overrides: str) -> Config:
    return load_config(overrides=[f"lakehouse.landing={landing}", *overrides], environ={}, base_file=None)


def _read_lines(folder: Path) -> list[str]:
    return [line for path in sorted(folder.glob("part-*.jsonl")) for line in path.read_text().splitlines()]


def _read_dims(root: Path, ds: date, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / ds.isoformat() / "dims" / f"{name}.jsonl").read_text().splitlines()]


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _days() -> list[date]:
    return [START + timedelta(days=i) for i in range(DAYS)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LandingSummary]:
    root = tmp_path_factory.mktemp("clean")
    return root, write_landing(_config(root))


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LandingSummary]:
    root = tmp_path_factory.mktemp("faulty")
    rates = [f"synth.faults.{name}={RATE}" for name in FAULT_CLASSES]
    return root, write_landing(_config(root, *rates))


# --- layout ------------------------------------------------------------------------------------


def test_layout_and_event_lines_are_exactly_what_ingestion_reads(clean: tuple[Path, LandingSummary]) -> None:
    root, summary = clean
    assert sorted(p.name for p in root.iterdir()) == [*(ds.isoformat() for ds in _days()), "images"]
    event_ids = set()
    for ds in _days():
        parts = sorted(p.name for p in (root / ds.isoformat() / "events").iterdir())
        assert parts == [f"part-{i:05d}.jsonl" for i in range(TINY.files_per_day)]
        lines = _read_lines(root / ds.isoformat() / "events")
        assert len(lines) == TINY.impressions_per_day == summary.day(ds).lines
        for line in lines[:2000]:
            record = json.loads(line)
            assert line == json.dumps(record, separators=(",", ":"))
            assert list(record) == list(EVENT_KEYS)
            assert all(isinstance(record[key], str) for key in EVENT_KEYS[:5])
            assert type(record["position"]) is int and 1 <= record["position"] <= 5
            assert type(record["clicked"]) is bool
            assert datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%SZ").date() == ds
        event_ids.update(json.loads(line)["event_id"] for line in lines)
    assert len(event_ids) == DAYS * TINY.impressions_per_day


def test_dimension_files_land_every_row_first_then_upserts(clean: tuple[Path, LandingSummary]) -> None:
    root, _ = clean
    known: dict[str, dict[str, dict]] = {name: {} for name in DIM_KEYS}
    for day, ds in enumerate(_days()):
        for name, keys in DIM_KEYS.items():
            rows = _read_dims(root, ds, name)
            assert all(list(row) == keys for row in rows), name
            ids = [row[keys[0]] for row in rows]
            assert ids == sorted(set(ids))
            if name != "creatives":
                changed = [row for row in rows if row[keys[0]] in known[name] and row != known[name][row[keys[0]]]]
                assert bool(changed) == (day > 0), (name, ds)
            known[name].update(zip(ids, rows, strict=True))
        # Every id an event uses is in the dimension files of that day or before.
        for line in _read_lines(root / ds.isoformat() / "events")[:5000]:
            event = json.loads(line)
            assert event["user_id"] in known["users"] and event["product_id"] in known["products"]
            assert known["creatives"][event["creative_id"]]["product_id"] == event["product_id"]
    assert len(known["users"]) > 0.9 * TINY.users and len(known["products"]) > 0.9 * TINY.products
    assert {row["origin"] for row in known["creatives"].values()} == {"logged"}
    assert all(row["image_uri"] is None for row in known["creatives"].values())
    assert {row["category"] for row in known["products"].values()} == set(CATEGORIES)


def test_every_day_names_the_world_that_wrote_it(tmp_path: Path) -> None:
    write_landing(_config(tmp_path, "synth.seed=11"), days=2)
    for ds in _days()[:2]:
        manifest = tmp_path / ds.isoformat() / MANIFEST_FILE
        assert json.loads(manifest.read_text()) == {"seed": 11, "scale": "tiny"}
    assert not list(tmp_path.rglob(".*.tmp"))  # written under a temporary name, then renamed


def test_each_product_has_an_rgba_cutout_at_its_image_uri(clean: tuple[Path, LandingSummary]) -> None:
    root, _ = clean
    products = [row for ds in _days() for row in _read_dims(root, ds, "products")]
    for row in products:
        path = Path(row["image_uri"])
        assert path.is_absolute() and path == root / "images" / "products" / f"{row['product_id']}.png"
        with Image.open(path) as image:
            assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0


def test_the_background_library_lists_each_painted_image_with_its_prompt(clean: tuple[Path, LandingSummary]) -> None:
    folder = clean[0] / "images" / "backgrounds"
    listing = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(listing) == TINY.backgrounds == len(list(folder.glob("*.png")))
    assert len({entry["text"] for entry in listing}) > 0.9 * len(listing)
    for i, entry in enumerate(listing[:5]):
        with Image.open(folder / entry["file_name"]) as image:
            assert np.array_equal(np.asarray(image), np.asarray(paint_background(entry["text"], 64, seed=i)))


def test_clicks_look_like_ad_clicks(clean: tuple[Path, LandingSummary]) -> None:
    root, _ = clean
    events = [json.loads(line) for ds in _days() for line in _read_lines(root / ds.isoformat() / "events")]
    ctr = np.mean([event["clicked"] for event in events])
    assert 0.01 <= ctr <= 0.08
    by_position = {p: np.mean([e["clicked"] for e in events if e["position"] == p]) for p in (1, 5)}
    assert by_position[1] > by_position[5]


# --- reproducibility ---------------------------------------------------------------------------


def test_the_same_arguments_give_the_same_bytes(tmp_path: Path) -> None:
    first, second, other_seed = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_landing(_config(first), days=1)
    snapshot = _tree(first)
    write_landing(_config(first), days=1)
    assert _tree(first) == snapshot  # a rerun overwrites with the same bytes, leaves no temp files
    write_landing(_config(second), days=1)
    events = f"{START.isoformat()}/events/part-00000.jsonl"
    assert _tree(second)[events] == snapshot[events]
    write_landing(_config(other_seed, "synth.seed=8"), days=1)
    assert _tree(other_seed)[events] != snapshot[events]


def test_a_rerun_removes_parts_an_earlier_run_left(tmp_path: Path) -> None:
    stale = tmp_path / START.isoformat() / "events" / "part-00099.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")
    write_landing(_config(tmp_path), days=1)
    assert not stale.exists()


# --- faults ------------------------------------------------------------------------------------


def _classify(line: str, ds: date, known: dict[str, set[str]], today: set[str], yesterday: set[str]) -> str | None:
    """Which fault a landed line shows, judged from the files alone (None: a clean line)."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return "malformed_json"
    if set(event) < set(EVENT_KEYS):
        return "missing_field"
    if set(event) > set(EVENT_KEYS):
        return "extra_field"
    if type(event["position"]) is not int or type(event["clicked"]) is not bool:
        return "wrong_type"
    if event["event_id"] in yesterday:
        return "duplicate_previous_day"
    if event["event_id"] in today:
        return "duplicate_same_day"
    today.add(event["event_id"])
    if any(event[key] not in known[key] for key in known):
        return "unknown_id"
    happened = datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%SZ").date()
    if happened >= ds + timedelta(days=2):
        return "future"
    if ds - timedelta(days=2) <= happened < ds:
        return "late"
    assert happened == ds, line
    return None


def test_every_fault_lands_at_its_rate_and_the_summary_counts_it_exactly(faulty: tuple[Path, LandingSummary]) -> None:
    root, summary = faulty
    known: dict[str, set[str]] = {"user_id": set(), "product_id": set(), "creative_id": set()}
    yesterday: set[str] = set()
    totals: Counter = Counter()
    for ds in _days():
        for key, name in (("user_id", "users"), ("product_id", "products"), ("creative_id", "creatives")):
            known[key] |= {row[key] for row in _read_dims(root, ds, name)}
        lines = _read_lines(root / ds.isoformat() / "events")
        today: set[str] = set()
        found = Counter(_classify(line, ds, known, today, yesterday) for line in lines)
        day = summary.day(ds)
        assert len(lines) == day.lines and found[None] == day.clean_lines
        assert {name: found[name] for name in FAULT_CLASSES} == day.faults
        totals.update(day.faults)
        yesterday = today
    for name in SYNTH_LINE_FAULTS:
        expected = RATE * DAYS * TINY.impressions_per_day
        assert abs(totals[name] - expected) < 5 * np.sqrt(expected), name
    assert totals["duplicate_same_day"] == pytest.approx(RATE * DAYS * TINY.impressions_per_day, rel=0.25)
    assert totals["duplicate_previous_day"] == pytest.approx(RATE * (DAYS - 1) * TINY.impressions_per_day, rel=0.25)
    assert not summary.day(START).faults["duplicate_previous_day"]


def test_faults_do_not_change_the_clean_events(
    clean: tuple[Path, LandingSummary], faulty: tuple[Path, LandingSummary]
) -> None:
    """Fault injection draws from its own random stream: switching it on spoils lines, not the world."""
    clean_lines = set(_read_lines(clean[0] / START.isoformat() / "events"))
    faulty_lines = _read_lines(faulty[0] / START.isoformat() / "events")
    day = faulty[1].day(START)
    # Clean lines and their same-day repeats are untouched; every other fault rewrites its line.
    assert sum(line in clean_lines for line in faulty_lines) == day.clean_lines + day.faults["duplicate_same_day"]


def test_an_empty_day_has_an_events_folder_without_lines(tmp_path: Path) -> None:
    summary = write_landing(_config(tmp_path, "synth.faults.empty_day=1.0"), days=2)
    for ds in (START, START + timedelta(days=1)):
        folder = tmp_path / ds.isoformat() / "events"
        assert folder.is_dir() and list(folder.iterdir()) and not _read_lines(folder)
        assert summary.day(ds).empty and summary.day(ds).lines == 0
        assert (tmp_path / ds.isoformat() / "dims" / "users.jsonl").exists()  # only the events were lost
    assert summary.as_dict()["days"][0]["empty"] is True


def test_summary_as_dict_reconciles(faulty: tuple[Path, LandingSummary]) -> None:
    as_dict = faulty[1].as_dict()
    assert as_dict["lines"] == sum(day["lines"] for day in as_dict["days"])
    for day in as_dict["days"]:
        assert set(day["faults"]) == set(FAULT_CLASSES)
        assert day["clean_lines"] + sum(day["faults"].values()) == day["lines"]


def test_a_landing_on_an_object_store_holds_what_a_folder_does(object_store: str, tmp_path: Path) -> None:
    remote = f"{object_store}/landing"
    stale = artifacts.join(remote, START.isoformat(), "events", "part-00099.jsonl")
    artifacts.write_atomically(stale, b"{}\n")
    summary = write_landing(_config(remote), days=2)
    local = write_landing(_config(tmp_path), days=2)
    assert summary.root == remote and summary.as_dict()["days"] == local.as_dict()["days"]
    assert not artifacts.exists(stale)
    fs, bucket_path = fsspec.core.url_to_fs(remote)

    def as_if_local(path: str) -> str:
        # Only the products' image_uri names the landing's root; every other byte is the same.
        return hashlib.sha256(fs.cat_file(path).replace(remote.encode(), bytes(tmp_path))).hexdigest()

    assert {path.removeprefix(f"{bucket_path}/"): as_if_local(path) for path in fs.find(bucket_path)} == _tree(tmp_path)


# --- the closed loop ---------------------------------------------------------------------------


def _lookup(world, prompt_for) -> pd.DataFrame:
    """Every (user, product) of the first 16 products, one generated creative per product and
    gender; and of the next 4, the product's first logged creative (as a fallback is served)."""
    users = world.users[["user_id", "gender"]]
    rows = []
    for product_id in world.products["product_id"].head(16):
        for gender, members in users.groupby("gender"):
            creative_id, prompt = f"gen-{product_id}-{gender}", prompt_for(product_id, gender)
            rows += [
                (u, product_id, creative_id, "generated", prompt, f"/img/{creative_id}.png") for u in members["user_id"]
            ]
    logged = world.creatives.drop_duplicates("product_id").set_index("product_id")
    for product_id in world.products["product_id"].iloc[16:20]:
        creative = logged.loc[product_id]
        rows += [(u, product_id, creative["creative_id"], "logged", creative["prompt"], None) for u in users["user_id"]]
    columns = ["user_id", "product_id", "creative_id", "origin", "prompt", "image_uri"]
    return pd.DataFrame(rows, columns=columns)


def _served_day(root: Path, lookup: pd.DataFrame, share: float = 0.5) -> list[dict]:
    cfg = _config(root)
    write_served_day(cfg, (cfg.synth.seed, "tiny"), START, START + timedelta(days=1), Serving(lookup, share))
    return [json.loads(line) for line in _read_lines(root / (START + timedelta(days=1)).isoformat() / "events")]


def test_a_served_day_shows_each_group_its_creative_and_keeps_the_rest_of_the_traffic(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    write_landing(_config(root, "synth.faults.duplicate_previous_day=0"), days=2)
    plain = [json.loads(line) for line in _read_lines(root / "2026-11-02" / "events")]
    world = build_world(_config(root).synth.seed, "tiny")
    lookup = _lookup(world, lambda product_id, gender: f"a sunlit beach scene for {gender} shoppers")
    served = _served_day(root, lookup)
    # The same impressions in the same order, faults included; only some creatives (and clicks) differ.
    assert [e["event_id"] for e in served] == [e["event_id"] for e in plain]
    shown = {(u, p): c for u, p, c in lookup[["user_id", "product_id", "creative_id"]].itertuples(index=False)}
    eligible = [(s, e) for s, e in zip(served, plain, strict=True) if (s["user_id"], s["product_id"]) in shown]
    swapped = [s for s, e in eligible if s["creative_id"] != e["creative_id"] or s["creative_id"].startswith("gen-")]
    assert all(s["creative_id"] == shown[s["user_id"], s["product_id"]] for s in swapped)
    assert 0.4 < len(swapped) / len(eligible) < 0.6
    untouched = [(s, e) for s, e in zip(served, plain, strict=True) if (s["user_id"], s["product_id"]) not in shown]
    assert untouched and all(s == e for s, e in untouched)
    creatives = {c["creative_id"]: c for c in _read_dims(root, START + timedelta(days=1), "creatives")}
    assert {c["origin"] for c in creatives.values() if c["creative_id"].startswith("gen-")} == {"generated"}
    generated = lookup["origin"] == "generated"
    assert set(lookup.loc[generated, "creative_id"]) <= set(creatives)
    # A logged creative served as a fallback is known already: the day's file does not list it again.
    assert not set(lookup.loc[~generated, "creative_id"]) & set(creatives)
    # Served again: the same bytes.
    before = _tree(root)
    _served_day(root, lookup)
    assert _tree(root) == before


def test_the_click_model_decides_a_served_creatives_clicks(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    write_landing(_config(root), days=1)
    oracle = Oracle(build_world(_config(root).synth.seed, "tiny"))
    world = build_world(_config(root).synth.seed, "tiny")
    rates = {}
    for name, pick in (("best", max), ("worst", min)):

        def prompt_for(product_id, gender, pick=pick):
            candidates = [
                oracle.best_prompt(product_id),
                "a misty forest scene, cool blue tones, neon glow",
                "a sunlit beach scene, warm golden tones, soft morning light",
            ]
            return pick(candidates, key=lambda prompt: oracle.expected_ctr(product_id, prompt))

        events = [
            e for e in _served_day(root, _lookup(world, prompt_for), share=1.0) if e["creative_id"].startswith("gen-")
        ]
        rates[name] = np.mean([e["clicked"] for e in events])
    assert rates["best"] > 1.2 * rates["worst"], rates


def test_a_days_requests_are_its_logged_traffic_with_the_users_attributes(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    cfg = _config(root)
    write_landing(cfg, days=2)
    world = build_world(cfg.synth.seed, "tiny")
    requests = day_requests(world, START, START + timedelta(days=1))
    events = [json.loads(line) for line in _read_lines(root / "2026-11-02" / "events")]
    clean = [e for e in events if isinstance(e, dict) and {"user_id", "product_id"} <= set(e)]
    landed = Counter((e["user_id"], e["product_id"]) for e in clean if e["event_id"].startswith("ev-20261102"))
    asked = Counter(zip(requests["user_id"], requests["product_id"], strict=True))
    # Every landed event was asked for; what was asked and did not land is what faults dropped.
    assert not landed - asked and sum((asked - landed).values()) < 0.05 * sum(asked.values())
    users = world.users_on(1).set_index("user_id")
    row = requests.iloc[0]
    assert row["age_band"] == users.at[row["user_id"], "age_band"] and isinstance(row["interests"], list)
