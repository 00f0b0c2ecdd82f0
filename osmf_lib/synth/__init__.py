"""The simulated world (docs/design.md#simulated-world): users, products, creatives, a hidden click model, and the
landing files a real ad server's logs would leave.

    write_landing(cfg)             -> LandingSummary   landing files for cfg.synth's days
    day_requests(world, first, day) -> DataFrame       the day's (user, product) requests, with attributes
    write_served_day(cfg, world, first, day, Serving(lookup, share))
                                   -> DaySummary       a day rewritten with a night's creatives served
    build_world(seed, scale)       -> World            the same world, in memory

The click oracle lives in `osmf_lib.synth.oracle` and is deliberately not re-exported here:
only evaluation may import it.
"""

from osmf_lib.synth.landing import (
    DaySummary,
    LandingSummary,
    Serving,
    day_requests,
    write_landing,
    write_served_day,
)
from osmf_lib.synth.world import SCALES, Scale, World, build_world

__all__ = [
    "SCALES",
    "DaySummary",
    "LandingSummary",
    "Scale",
    "Serving",
    "World",
    "build_world",
    "day_requests",
    "write_landing",
    "write_served_day",
]
