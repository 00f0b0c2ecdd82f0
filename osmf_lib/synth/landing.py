"""Landing files as a log shipper and a dimension export would leave them, faults included.

    {landing}/{ds}/events/part-00000.jsonl ...    impressions, one JSON object per line
    {landing}/{ds}/dims/users.jsonl, products.jsonl, creatives.jsonl
                                                  day 1: every row; later days: new and changed rows
    {landing}/{ds}/synth-manifest.json            {"seed": ..., "scale": ...}: the world that wrote the day
    {landing}/images/products/{product_id}.png    written on the day the product first lands
    {landing}/images/backgrounds/*.png, metadata.jsonl
                                                  a stock library of painted backgrounds and their prompts
                                                  ({"file_name", "text"} per line), written with day 1

Ingestion (docs/design.md#ingest) depends on this layout exactly. `{landing}` is a local folder or an object
store URI (s3a://...), written through `osmf_lib.artifacts`: a local file is written under a hidden
temporary name and renamed into place, an object in one PUT, so a reader never sees half a file,
and a rerun with the same arguments rewrites the same bytes. Events are generated and written one
file at a time, so memory stays bounded at any scale. The returned LandingSummary counts every
injected fault, so ingestion tests can reconcile exactly.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from functools import cached_property

import numpy as np
import pandas as pd

from osmf_lib import artifacts
from osmf_lib.config import SYNTH_LINE_FAULTS, Config, FaultRates
from osmf_lib.synth.backgrounds import paint_background
from osmf_lib.synth.images import product_png
from osmf_lib.synth.vocab import STYLE_VALUES, compose_prompt, parse_prompt
from osmf_lib.synth.world import Change, Impressions, Stream, World, build_world, rng_for

EVENT_KEYS = ("event_id", "ts", "user_id", "product_id", "creative_id", "position", "clicked")
FAULT_CLASSES = (*SYNTH_LINE_FAULTS, "duplicate_same_day", "duplicate_previous_day")
USER_KEYS = ("user_id", "age_band", "gender", "city_tier", "purchase_power", "occupation", "device", "interests")
PRODUCT_KEYS = ("product_id", "title", "category", "price_band", "image_uri")
TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # ISO-8601, UTC, whole seconds
CREATIVE_KEYS = ("creative_id", "product_id", "prompt", "image_uri", "origin")
# Ingestion records it in `landing_manifests`, so evaluation grades against the world that wrote a day.
MANIFEST_FILE = "synth-manifest.json"
# The tiny renderer's canvas (render.tiny.size); larger renderers are not trained on these.
BACKGROUND_SIZE = 64

# The same bytes json.dumps(record, separators=(",", ":")) gives, at a fraction of the cost.
_EVENT_LINE = (
    '{"event_id":"%s","ts":"%s","user_id":"%s","product_id":"%s","creative_id":"%s","position":%d,"clicked":%s}\n'
)


def _json_line(record: Mapping) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"


def _iso(moment: datetime) -> str:
    return moment.strftime(TS_FORMAT)


# --- summary -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaySummary:
    ds: date
    files: int
    lines: int  # every event line written, faulty and duplicate ones included
    faults: Mapping[str, int]  # lines injected per fault class (FAULT_CLASSES, zeros included)
    empty: bool  # the day's events were lost: its folder holds one empty file

    @property
    def clean_lines(self) -> int:
        return self.lines - sum(self.faults.values())

    def as_dict(self) -> dict:
        return {
            "ds": self.ds.isoformat(),
            "files": self.files,
            "lines": self.lines,
            "clean_lines": self.clean_lines,
            "empty": self.empty,
            "faults": dict(self.faults),
        }


@dataclass(frozen=True)
class LandingSummary:
    root: str
    seed: int
    scale: str
    days: tuple[DaySummary, ...]

    @property
    def lines(self) -> int:
        return sum(day.lines for day in self.days)

    def day(self, ds: date) -> DaySummary:
        return next(day for day in self.days if day.ds == ds)

    def as_dict(self) -> dict:
        return {
            "root": self.root,
            "seed": self.seed,
            "scale": self.scale,
            "lines": self.lines,
            "days": [day.as_dict() for day in self.days],
        }


# --- files -------------------------------------------------------------------------------------


def _write_lines(uri: str, lines: Sequence[str]) -> None:
    artifacts.write_atomically(uri, "".join(lines).encode())


def _part_name(part: int) -> str:
    return f"part-{part:05d}.jsonl"


def _remove_stale_parts(folder: str, keep: int) -> None:
    """A rerun with fewer files per day must not leave an earlier run's extra parts behind."""
    current = {_part_name(part) for part in range(keep)}
    for name in artifacts.names(folder):
        if name.startswith("part-") and name.endswith(".jsonl") and name not in current:
            artifacts.remove(artifacts.join(folder, name))


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventBatch:
    """Simulated impressions of one events file, as the JSON fields they land with."""

    ds: date
    part: int
    impressions: Impressions
    world: World
    # Per impression, the published creative it showed instead of its logged one ("" for none).
    served: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.impressions)

    @cached_property
    def columns(self) -> dict[str, list]:
        imp = self.impressions
        moments = np.datetime64(self.ds, "s") + imp.second.astype("timedelta64[s]")
        prefix = f"ev-{self.ds:%Y%m%d}-{self.part:03d}-"
        return {
            "event_id": [f"{prefix}{i:07d}" for i in range(len(imp))],
            "ts": [f"{moment}Z" for moment in np.datetime_as_string(moments, unit="s")],
            "user_id": _ids(self.world.users["user_id"])[imp.user].tolist(),
            "product_id": _ids(self.world.products["product_id"])[imp.product].tolist(),
            "creative_id": self._creative_ids().tolist(),
            "position": imp.position.tolist(),
            "clicked": imp.clicked.tolist(),
        }

    def _creative_ids(self) -> np.ndarray:
        logged = _ids(self.world.creatives["creative_id"])[self.impressions.creative]
        return logged if self.served is None else np.where(self.served != "", self.served, logged)

    def lines(self) -> list[str]:
        c = self.columns
        flags = ["true" if clicked else "false" for clicked in c["clicked"]]
        rows = zip(*(c[key] for key in EVENT_KEYS[:-1]), flags, strict=True)
        return [_EVENT_LINE % row for row in rows]

    def record(self, i: int) -> dict:
        return {key: self.columns[key][i] for key in EVENT_KEYS}


def _ids(column: pd.Series) -> np.ndarray:
    return column.to_numpy(dtype=str)


# --- the closed loop ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Serving:
    """A night's published creatives as the next day's traffic meets them.

    `lookup`: user_id, product_id, creative_id, origin, prompt, image_uri, one row per user and
    product (what osmf-serving answered for it). An impression of a listed (user, product) shows
    that creative instead of its logged one with probability `share`; the hidden click model
    decides the click from the creative's prompt, exactly as for a logged background.
    """

    lookup: pd.DataFrame
    share: float

    def creatives(self) -> pd.DataFrame:
        """The generated creatives served, for the day's creatives file (logged ones are known)."""
        rows = self.lookup[self.lookup["origin"] == "generated"]
        rows = rows.drop_duplicates("creative_id").sort_values("creative_id")
        return rows[["creative_id", "product_id", "prompt", "image_uri", "origin"]]


@dataclass(frozen=True)
class ServedIndex:
    """`Serving` in the world's row numbers, built once for a day's files."""

    keys: np.ndarray  # sorted user_row * products + product_row
    creative: np.ndarray  # per key: the row of its creative in ids and styles
    ids: np.ndarray  # creative ids
    styles: np.ndarray  # [creative, segment]: the prompt's effect on the segment's logit
    share: float

    @classmethod
    def build(cls, serving: Serving, world: World) -> ServedIndex:
        lookup = serving.lookup
        users = pd.Index(world.users["user_id"]).get_indexer(lookup["user_id"])
        products = pd.Index(world.products["product_id"]).get_indexer(lookup["product_id"])
        known = (users >= 0) & (products >= 0)  # rows of another world never match an impression
        keys = users[known].astype(np.int64) * len(world.products) + products[known]
        order = np.argsort(keys, kind="stable")
        ids, creative = np.unique(lookup["creative_id"].to_numpy(dtype=str)[known][order], return_inverse=True)
        prompts = lookup.drop_duplicates("creative_id").set_index("creative_id")
        model = world.click_model
        category = dict(zip(world.products["product_id"], model.product_category, strict=True))
        styles = [
            model.prompt_shift(category[prompts.at[i, "product_id"]], parse_prompt(prompts.at[i, "prompt"]))
            for i in ids
        ]
        styles = np.stack(styles) if styles else np.zeros((0, 1))
        return cls(keys[order], creative, ids, styles, serving.share)

    def apply(self, impressions: Impressions, world: World, rng: np.random.Generator) -> tuple[Impressions, np.ndarray]:
        """The impressions with served ones re-clicked, and per impression the served id or ""."""
        n, imp = len(impressions), impressions
        chance, draws = rng.random(n), rng.random(n)
        served = np.full(n, "", dtype=object)
        if not len(self.keys):
            return impressions, served
        key = imp.user.astype(np.int64) * len(world.products) + imp.product
        at = np.searchsorted(self.keys, key).clip(max=len(self.keys) - 1)
        shown = (self.keys[at] == key) & (chance < self.share)
        creative = self.creative[at[shown]]
        model = world.click_model
        user, product = imp.user[shown], imp.product[shown]
        style = self.styles[creative, model.segments_of(user, product)]
        clicked = imp.clicked.copy()
        clicked[shown] = draws[shown] < model.probability(user, product, imp.position[shown], style)
        served[shown] = self.ids[creative]
        return replace(imp, clicked=clicked), served


# --- faults ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultContext:
    ds: date
    world: World

    def unknown_id(self, key: str, rng: np.random.Generator) -> str:
        """An id in the world's own format that no dimension file, on any day, will ever hold."""
        known = {"user_id": self.world.users, "product_id": self.world.products, "creative_id": self.world.creatives}
        existing = known[key][key].iloc[-1]
        width = len(existing) - 1
        return f"{existing[0]}{rng.integers(int(existing[1:]) + 1, 10**width):0{width}d}"


Fault = Callable[[dict, np.random.Generator, FaultContext], str]
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")


def _malformed_json(record: dict, rng: np.random.Generator, ctx: FaultContext) -> str:
    """Cut mid-line, as a shipper killed mid-write leaves it; no prefix of an object is valid JSON."""
    line = _json_line(record).rstrip("\n")
    return line[: rng.integers(1, len(line))] + "\n"


def _missing_field(record: dict, rng: np.random.Generator, ctx: FaultContext) -> str:
    dropped = EVENT_KEYS[rng.integers(len(EVENT_KEYS))]
    return _json_line({key: value for key, value in record.items() if key != dropped})


def _extra_field(record: dict, rng: np.random.Generator, ctx: FaultContext) -> str:
    return _json_line({**record, "session_id": f"s{rng.integers(10**9):09d}"})


def _wrong_type(record: dict, rng: np.random.Generator, ctx: FaultContext) -> str:
    if rng.random() < 0.5:
        return _json_line({**record, "position": NUMBER_WORDS[record["position"]]})
    return _json_line({**record, "clicked": "yes" if record["clicked"] else "no"})


def _unknown_id(record: dict, rng: np.random.Generator, ctx: FaultContext) -> str:
    key = ("user_id", "product_id", "creative_id")[rng.integers(3)]
    return _json_line({**record, key: ctx.unknown_id(key, rng)})


def _late(record: dict, rng: np.random.Generator, ctx: FaultContext) -> str:
    """An event that happened one or two days earlier, shipped only now."""
    moment = datetime.strptime(record["ts"], TS_FORMAT) - timedelta(days=int(rng.integers(1, 3)))
    return _json_line({**record, "ts": _iso(moment)})


def _future(record: dict, rng: np.random.Generator, ctx: FaultContext) -> str:
    """A clock far ahead: later than the end of the day after ds."""
    day_after_next = datetime.combine(ctx.ds + timedelta(days=2), time())
    return _json_line({**record, "ts": _iso(day_after_next + timedelta(seconds=int(rng.integers(86_400))))})


LINE_FAULTS: Mapping[str, Fault] = {
    "malformed_json": _malformed_json,
    "missing_field": _missing_field,
    "extra_field": _extra_field,
    "wrong_type": _wrong_type,
    "unknown_id": _unknown_id,
    "late": _late,
    "future": _future,
}
assert tuple(LINE_FAULTS) == SYNTH_LINE_FAULTS, "every configured line fault needs an injector"


@dataclass(frozen=True)
class FaultedFile:
    lines: list[str]
    faults: Counter
    redelivered_tomorrow: list[str]


def _inject_faults(batch: EventBatch, rates: FaultRates, rng: np.random.Generator) -> FaultedFile:
    """Corrupt some lines (at most one fault each) and repeat some clean ones.

    Only clean lines are repeated or kept for tomorrow's redelivery, so a duplicate is always
    an exact copy of a line ingestion accepts: in = accepted + rejected + duplicates.
    """
    n = len(batch)
    line_rates = [getattr(rates, name) for name in SYNTH_LINE_FAULTS]
    clean_kind = len(SYNTH_LINE_FAULTS)
    kind = rng.choice(clean_kind + 1, size=n, p=[*line_rates, max(0.0, 1.0 - sum(line_rates))])
    lines = batch.lines()
    ctx = FaultContext(batch.ds, batch.world)
    faults: Counter = Counter()
    for i in np.flatnonzero(kind != clean_kind):
        name = SYNTH_LINE_FAULTS[kind[i]]
        lines[i] = LINE_FAULTS[name](batch.record(i), rng, ctx)
        faults[name] += 1
    clean = kind == clean_kind
    repeated = np.flatnonzero(clean & (rng.random(n) < rates.duplicate_same_day))
    faults["duplicate_same_day"] = len(repeated)
    redelivered = np.flatnonzero(clean & (rng.random(n) < rates.duplicate_previous_day))
    return FaultedFile(_with_repeats(lines, repeated, rng), faults, [lines[i] for i in redelivered])


def _with_repeats(lines: list[str], repeated: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Each repeated line i appears a second time, right after some line j >= i."""
    n = len(lines)
    after = rng.integers(repeated, n) if len(repeated) else repeated
    # Sort keys: 2i for the originals, 2j + 1 for the repeats.
    order = np.argsort(np.concatenate([2 * np.arange(n), 2 * after + 1]), kind="stable")
    everything = lines + [lines[i] for i in repeated]
    return [everything[k] for k in order]


# --- the writer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandingWriter:
    world: World
    root: str
    rates: FaultRates

    def _rng(self, stream: Stream, *keys: int) -> np.random.Generator:
        return rng_for(self.world.seed, self.world.scale_name, stream, *keys)

    def image_uri(self, product_id: str) -> str:
        return artifacts.join(self.root, "images", "products", f"{product_id}.png")

    def write_day(
        self, day: int, ds: date, redelivered: Sequence[str], serving: Serving | None = None
    ) -> tuple[DaySummary, list[str]]:
        """Write one ds; return its summary and the lines to redeliver at the start of the next."""
        self._write_images(day)
        if day == 0:
            self._write_backgrounds()
        self._write_dims(day, ds, serving)
        self._write_manifest(ds)
        return self._write_events(day, ds, redelivered, serving)

    def _write_manifest(self, ds: date) -> None:
        manifest = {"seed": self.world.seed, "scale": self.world.scale_name}
        uri = artifacts.join(self.root, ds.isoformat(), MANIFEST_FILE)
        artifacts.write_atomically(uri, _json_line(manifest).encode())

    def _write_images(self, day: int) -> None:
        products = self.world.products
        for row in np.flatnonzero(products["since"].to_numpy() == day):
            png = product_png(products["category"].iat[row], self._rng(Stream.IMAGES, int(row)))
            artifacts.write_atomically(self.image_uri(products["product_id"].iat[row]), png)

    def _write_backgrounds(self) -> None:
        """Prompts naming a random value of each style attribute (each left out one time in
        eight), painted at the tiny renderer's size; the listing is written last."""
        folder = artifacts.join(self.root, "images", "backgrounds")
        rng = self._rng(Stream.BACKGROUNDS)
        lines = []
        for i in range(self.world.scale.backgrounds):
            values = {a: v[rng.integers(len(v))] for a, v in STYLE_VALUES.items() if rng.random() >= 1 / 8}
            prompt, name = compose_prompt(values), f"{i:05d}.png"
            buffer = io.BytesIO()
            paint_background(prompt, BACKGROUND_SIZE, seed=i).save(buffer, format="PNG")
            artifacts.write_atomically(artifacts.join(folder, name), buffer.getvalue())
            lines.append(_json_line({"file_name": name, "text": prompt}))
        _write_lines(artifacts.join(folder, "metadata.jsonl"), lines)

    def _write_dims(self, day: int, ds: date, serving: Serving | None) -> None:
        """Day 0: every row. Later days: rows that arrive that day and rows that changed, as
        upserts; a served day also lists the creatives it serves."""
        world = self.world
        folder = artifacts.join(self.root, ds.isoformat(), "dims")
        users = _landed_rows(world.users_on(day), day, world.user_changes(day))
        products = _landed_rows(world.products_on(day), day, world.product_changes(day))
        products["image_uri"] = [self.image_uri(pid) for pid in products["product_id"]]
        creatives = world.creatives[world.creatives["since"] == day].assign(image_uri=None, origin="logged")
        if serving is not None:
            creatives = pd.concat([creatives, serving.creatives()], ignore_index=True)
        for name, frame, keys in (
            ("users", users, USER_KEYS),
            ("products", products, PRODUCT_KEYS),
            ("creatives", creatives, CREATIVE_KEYS),
        ):
            records = frame[list(keys)].to_dict("records")
            _write_lines(artifacts.join(folder, f"{name}.jsonl"), [_json_line(_plain(record)) for record in records])

    def _write_events(
        self, day: int, ds: date, redelivered: Sequence[str], serving: Serving | None
    ) -> tuple[DaySummary, list[str]]:
        folder = artifacts.join(self.root, ds.isoformat(), "events")
        faults = Counter(dict.fromkeys(FAULT_CLASSES, 0))
        if self._rng(Stream.EMPTY_DAYS, ds.toordinal()).random() < self.rates.empty_day:
            # The shipper created the day's file and then lost every event; yesterday's
            # redeliveries are lost with them.
            _write_lines(artifacts.join(folder, _part_name(0)), [])
            _remove_stale_parts(folder, keep=1)
            return DaySummary(ds, files=1, lines=0, faults=dict(faults), empty=True), []

        served = None if serving is None else ServedIndex.build(serving, self.world)
        files = self.world.scale.files_per_day
        written, tomorrow = 0, []
        for part, impressions in enumerate(logged_traffic(self.world, day, ds)):
            shown = None
            if served is not None:
                rng = self._rng(Stream.SERVING, ds.toordinal(), part)
                impressions, shown = served.apply(impressions, self.world, rng)
            batch = EventBatch(ds, part, impressions, self.world, shown)
            faulted = _inject_faults(batch, self.rates, self._rng(Stream.FAULTS, ds.toordinal(), part))
            # The shipper re-sends what it was unsure of yesterday before anything new.
            lines = [*redelivered, *faulted.lines] if part == 0 else faulted.lines
            _write_lines(artifacts.join(folder, _part_name(part)), lines)
            written += len(lines)
            faults.update(faulted.faults)
            tomorrow += faulted.redelivered_tomorrow
        faults["duplicate_previous_day"] = len(redelivered)
        _remove_stale_parts(folder, keep=files)
        return DaySummary(ds, files=files, lines=written, faults=dict(faults), empty=False), tomorrow


def logged_traffic(world: World, day: int, ds: date) -> Iterator[Impressions]:
    """The day's impressions as the logging policy picks them, one events file's worth at a time
    (its own random stream per file, so serving a day changes none of them)."""
    traffic = world.traffic(day)
    files = world.scale.files_per_day
    sizes = np.diff(np.linspace(0, world.scale.impressions_per_day, files + 1).astype(int))
    for part, size in enumerate(sizes):
        rng = rng_for(world.seed, world.scale_name, Stream.TRAFFIC, ds.toordinal(), part)
        yield traffic.draw(int(size), rng, (part / files, (part + 1) / files))


def day_requests(world: World, first: date, ds: date) -> pd.DataFrame:
    """What the ad server is asked on `ds` of the world whose first day was `first`: one row per
    impression of the day's logged traffic, user_id and product_id with the user's attributes as
    that day's users file carries them (USER_KEYS)."""
    day = (ds - first).days
    users = world.users_on(day)
    parts = list(logged_traffic(world, day, ds))
    user = np.concatenate([p.user for p in parts])
    product = np.concatenate([p.product for p in parts])
    requests = users.loc[user, list(USER_KEYS)].reset_index(drop=True)
    requests.insert(1, "product_id", world.products["product_id"].to_numpy()[product])
    requests["interests"] = requests["interests"].map(list)
    return requests


def _landed_rows(state: pd.DataFrame, day: int, changes: Sequence[Change]) -> pd.DataFrame:
    changed = [row for change in changes for row in change.rows]
    return state[(state["since"] == day) | state.index.isin(changed)].copy()


def _plain(record: dict) -> dict:
    """Tuples (interests) as JSON lists."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in record.items()}


def write_landing(
    cfg: Config,
    out: str | os.PathLike | None = None,
    scale: str | None = None,
    start: date | None = None,
    days: int | None = None,
) -> LandingSummary:
    """Write `days` days of landing files from `start` for the configured world; see module docstring.

    Defaults come from `cfg.synth`; `out` (a folder or an object store URI) defaults to
    `cfg.lakehouse.landing`.
    """
    synth = cfg.synth
    scale = scale or synth.scale
    start = start or synth.start
    days = days or synth.days
    location = artifacts.absolute(out if out is not None else cfg.lakehouse.landing)
    writer = LandingWriter(build_world(synth.seed, scale), location, synth.faults)
    summaries, redelivered = [], []
    for day in range(days):
        summary, redelivered = writer.write_day(day, start + timedelta(days=day), redelivered)
        summaries.append(summary)
    return LandingSummary(writer.root, synth.seed, scale, tuple(summaries))


def write_served_day(cfg: Config, world: tuple[int, str], first: date, ds: date, serving: Serving) -> DaySummary:
    """Rewrite the landing files of `ds` for the world (seed, scale) whose first day was `first`,
    with `serving`'s creatives shown to their groups. The logged traffic is the same as without
    serving (its own random streams); a served day carries no redeliveries of the day before."""
    day = (ds - first).days
    if day < 1:
        raise ValueError(f"ds={ds} is not after the world's first day {first}: serve the day after a published night")
    writer = LandingWriter(build_world(*world), artifacts.absolute(cfg.lakehouse.landing), cfg.synth.faults)
    return writer.write_day(day, ds, [], serving)[0]
