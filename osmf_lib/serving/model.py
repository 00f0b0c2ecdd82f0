"""The night's serving model: any user and product -> the product's group of the night -> that
group's creative. `osmf-serving` (registry.py) answers it over MLflow, `assign_requests` (bulk.py)
over a day of traffic in Spark; both call `ServingNight.assign`.

Each request row is answered with one `reason`:

- `unknown product`: the product is neither grouped tonight nor in the catalog with a creative;
  group and creative are null.
- `fallback`: a catalog product without groups tonight (no impression in the look-back window);
  no group, the product's best logged creative.
- `member`: `user_id` is given and in the product's user_groups of the night; that group, and the
  creative served to it.
- `assigned`: anyone else on a grouped product; the nearest group, and the creative served to it.

`assigned` embeds the user's attributes and the product with the PAAG version the groups were built
with and applies grouping's own rule, `grouping.nearest_centroids`, over the product's stored
centroids: since grouping settles its groups on that rule, a member's attributes place it in its
own group. A missing or never-seen attribute value is PAAG's unknown index, as in training. A
product with one group needs no embedding: everyone is in group 0. A group without a served
creative (none is, after publish) would get the product's fallback, with reason `fallback`.

A group's creative is drawn by the traffic shares serving_creatives gives its creatives (its best
and the candidates it explores), with a draw fixed per night, product and user
(`request_draws`); a request without a user id gets the group's best.

The product's best logged creative is the one with the highest smoothed CTR over all its groups'
impressions in the look-back window (the product's empirical-Bayes prior of group_creative_ctr);
a catalog product without impressions gets its lowest creative id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from osmf_lib.grouping.clustering import nearest_centroids
from osmf_lib.paag.features import PaagError
from osmf_lib.paag.model import USER_ATTRIBUTES, Paag, require_columns
from osmf_lib.tables import ASSIGNED, FALLBACK, MEMBER, UNKNOWN_PRODUCT

CREATIVE_COLUMNS = ("creative_id", "origin", "prompt", "image_uri")
# What the night serves: per (product, group) its centroid and its creatives with their shares of
# its traffic; per catalog product its fallback; per member its group.
GROUP_COLUMNS = ("product_id", "group_id", "centroid", *CREATIVE_COLUMNS, "traffic_share")
FALLBACK_COLUMNS = ("product_id", *CREATIVE_COLUMNS)
MEMBER_COLUMNS = ("product_id", "user_id", "group_id")
OUTPUT_COLUMNS = ("group_id", *CREATIVE_COLUMNS, "paag_version", "groups_ds", "reason")
PAAG_FOLDER = "paag"
FORMAT = 2


class ServingError(PaagError):
    """A serving model that cannot be built or read; or requests it cannot take (no product_id)."""


def member_keys(products: pd.Series | np.ndarray, users: pd.Series | np.ndarray) -> np.ndarray:
    """A 64-bit hash per (product, user): the members' index holds these, not the 1M+ strings.

    Two keys collide with probability 2^-64 per pair: with a million members a request is taken
    for a member it is not about once in 10^13 requests.
    """
    joined = pd.Series(products, dtype=object).astype(str) + "\x1f" + pd.Series(users, dtype=object).astype(str)
    return pd.util.hash_array(joined.to_numpy(dtype=object))


def request_draws(products: np.ndarray, users: np.ndarray, night: date) -> np.ndarray:
    """A uniform draw in [0, 1) per (product, user), fixed for the night and new the next; 0 (the
    group's best) without a user id."""
    users = pd.Series(users, dtype=object)
    keys = member_keys(products, users.astype(str) + "\x1f" + night.isoformat())
    return np.where(users.isna(), 0.0, (keys >> np.uint64(11)).astype(np.float64) * 2.0**-53)


@dataclass(frozen=True)
class ServingNight:
    """One night's groups, creatives and members with the PAAG version that built the groups
    (None on a night without groups, whose requests are all fallbacks or unknown)."""

    paag: Paag | None
    groups: pd.DataFrame  # GROUP_COLUMNS
    fallback: pd.DataFrame  # FALLBACK_COLUMNS
    members: pd.DataFrame  # MEMBER_COLUMNS
    paag_version: str | None
    groups_ds: date

    def __post_init__(self) -> None:
        for frame, columns, what in (
            (self.groups, GROUP_COLUMNS, "groups"),
            (self.fallback, FALLBACK_COLUMNS, "fallback creatives"),
            (self.members, MEMBER_COLUMNS, "members"),
        ):
            require_columns(frame, columns, f"the serving model's {what}", ServingError)
        if len(self.groups) and self.paag is None:
            raise ServingError("a serving model with groups needs the PAAG model that built them")

    # --- indexes, built once per loaded model -----------------------------------------------

    @cached_property
    def _grouped(self) -> pd.Index:
        return pd.Index(sorted(self.groups["product_id"].unique()), dtype=object)

    @cached_property
    def _by_group(self) -> dict[str, np.ndarray]:
        """Per grouped product (rows of `_grouped`) and group: the centroid (inf where the product
        has fewer groups: never nearest), and the product's group count."""
        groups = self.groups.drop_duplicates(["product_id", "group_id"])
        rows = self._grouped.get_indexer(groups["product_id"])
        numbers = groups["group_id"].to_numpy(dtype=np.int64)
        dim = len(groups["centroid"].iloc[0]) if len(groups) else 0
        centroids = np.full((len(self._grouped), self._width, dim), np.inf, dtype=np.float32)
        if len(groups):
            centroids[rows, numbers] = np.array(groups["centroid"].tolist(), dtype=np.float32)
        return {"centroid": centroids, "k": np.bincount(rows, minlength=len(self._grouped))}

    @cached_property
    def _width(self) -> int:
        return int(self.groups["group_id"].max()) + 1 if len(self.groups) else 1

    @cached_property
    def _creatives(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Every group's creatives in one table ordered by (grouped product, group) and, within a
        group, by share (largest first) and id -> (its group's slot, the slot plus the creative's
        cumulative share of the group, the CREATIVE_COLUMNS). A draw u in [0, 1) of slot s is the
        first row whose upper end exceeds s + u."""
        served = self.groups[self.groups["creative_id"].notna()]
        slot = self._grouped.get_indexer(served["product_id"]) * self._width + served["group_id"].to_numpy(
            dtype=np.int64
        )
        share = served["traffic_share"].to_numpy(dtype=np.float64)
        order = np.lexsort((served["creative_id"].to_numpy(dtype=str), -share, slot))
        slot, share = slot[order], share[order]
        total = pd.Series(share).groupby(slot).transform("sum").to_numpy()
        cumulative = pd.Series(share / total).groupby(slot).cumsum().to_numpy()
        last = np.append(slot[1:] != slot[:-1], True)[: len(slot)]
        cumulative[last] = 1.0  # rounding never leaves a draw without a creative
        columns = {c: served[c].to_numpy(dtype=object)[order] for c in CREATIVE_COLUMNS}
        return slot, slot + cumulative, columns

    @cached_property
    def _fallback(self) -> tuple[pd.Index, dict[str, np.ndarray]]:
        return pd.Index(self.fallback["product_id"], dtype=object), {
            c: self.fallback[c].to_numpy(dtype=object) for c in CREATIVE_COLUMNS
        }

    @cached_property
    def _members(self) -> tuple[np.ndarray, np.ndarray]:
        keys = member_keys(self.members["product_id"], self.members["user_id"])
        order = np.argsort(keys, kind="stable")
        return keys[order], self.members["group_id"].to_numpy(dtype=np.int64)[order]

    def _member_groups(self, products: np.ndarray, users: np.ndarray) -> np.ndarray:
        """Each (product, user)'s group of the night, -1 for a non-member or a missing user id."""
        keys, groups = self._members
        found = np.full(len(products), -1, dtype=np.int64)
        if not len(keys):
            return found
        wanted = member_keys(products, users)
        at = np.searchsorted(keys, wanted).clip(max=len(keys) - 1)
        hit = (keys[at] == wanted) & pd.notna(users)
        found[hit] = groups[at[hit]]
        return found

    def prepare(self) -> ServingNight:
        """Build the lookup indexes now (hashing a night's million members takes a second or two),
        so that a server's first request does not wait for them."""
        _ = self._by_group, self._creatives, self._fallback, self._members
        return self

    # --- answering ------------------------------------------------------------------------------

    def assign(self, requests: pd.DataFrame) -> pd.DataFrame:
        """Requests (product_id; user_id and USER_ATTRIBUTES optional, missing ones unknown) -> one
        row of OUTPUT_COLUMNS per request, in order. See the module docstring for the rules."""
        require_columns(requests, ("product_id",), "serving requests", ServingError)
        n = len(requests)
        products = requests["product_id"].to_numpy(dtype=object)
        grouped = self._grouped.get_indexer(products) if len(self._grouped) else np.full(n, -1)
        group = np.full(n, -1, dtype=np.int64)
        reason = np.full(n, UNKNOWN_PRODUCT, dtype=object)
        if "user_id" in requests:
            found = self._member_groups(products, requests["user_id"].to_numpy(dtype=object))
            member = (grouped >= 0) & (found >= 0)
            group[member], reason[member] = found[member], MEMBER
        table = self._by_group
        todo = np.flatnonzero((grouped >= 0) & (group < 0))
        alone = table["k"][grouped[todo]] == 1
        group[todo[alone]] = 0
        placed = todo[~alone]
        if len(placed):
            group[placed] = self._nearest(requests.iloc[placed], grouped[placed])
        reason[todo] = ASSIGNED

        creative = self._draw(grouped, group, products, requests)
        index, fallback = self._fallback
        at = index.get_indexer(products) if len(index) else np.full(n, -1)
        falls = (at >= 0) & pd.isna(creative["creative_id"])
        for column in CREATIVE_COLUMNS:
            creative[column][falls] = fallback[column][at[falls]]
        reason[falls] = FALLBACK
        return pd.DataFrame(
            {
                "group_id": pd.Series([int(g) if g >= 0 else None for g in group], dtype=object),
                **creative,
                "paag_version": self.paag_version,
                "groups_ds": self.groups_ds.isoformat(),
                "reason": reason,
            },
            columns=list(OUTPUT_COLUMNS),
        )

    def _draw(self, grouped: np.ndarray, group: np.ndarray, products: np.ndarray, requests: pd.DataFrame) -> dict:
        """Each placed request's creative, drawn by its group's traffic shares with a draw fixed by
        (night, product, user): a user sees one creative of a product all day, and a bulk answer
        and an HTTP answer agree. A request without a user id gets the group's best."""
        n = len(products)
        creative = {c: np.full(n, None, dtype=object) for c in CREATIVE_COLUMNS}
        placed = np.flatnonzero(group >= 0)
        slots, upper, columns = self._creatives
        if not len(placed) or not len(slots):
            return creative
        users = (
            requests["user_id"].to_numpy(dtype=object)[placed] if "user_id" in requests else np.full(len(placed), None)
        )
        u = request_draws(products[placed], users, self.groups_ds)
        slot = grouped[placed] * self._width + group[placed]
        at = np.searchsorted(upper, slot + u, side="right").clip(max=len(slots) - 1)
        found = slots[at] == slot
        for column in CREATIVE_COLUMNS:
            creative[column][placed[found]] = columns[column][at[found]]
        return creative

    def _nearest(self, requests: pd.DataFrame, products: np.ndarray) -> np.ndarray:
        """PAAG embeddings of the requests, each placed among its own product's centroids."""
        assert self.paag is not None
        pairs = requests.reindex(columns=["product_id", *USER_ATTRIBUTES]).astype(object)
        pairs = pairs.where(pairs.notna(), None)
        vectors = self.paag.embed(pairs).astype(np.float64)
        return nearest_centroids(vectors, self._by_group["centroid"][products])[0]

    # --- files ----------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.paag is not None:
            self.paag.save(folder / PAAG_FOLDER)
        for name, frame in (("groups", self.groups), ("fallback", self.fallback), ("members", self.members)):
            frame.to_parquet(folder / f"{name}.parquet", index=False)
        meta = {"format": FORMAT, "paag_version": self.paag_version, "groups_ds": self.groups_ds.isoformat()}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> ServingNight:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ServingError(f"{folder} holds serving format {meta.get('format')}, this code reads {FORMAT}")
        paag = Paag.load(folder / PAAG_FOLDER) if (folder / PAAG_FOLDER).exists() else None
        frames = {name: pd.read_parquet(folder / f"{name}.parquet") for name in ("groups", "fallback", "members")}
        return cls(paag, **frames, paag_version=meta["paag_version"], groups_ds=date.fromisoformat(meta["groups_ds"]))
