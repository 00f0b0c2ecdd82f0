"""The simulated world (DESIGN 7): users, products, creatives, a hidden click model, and the
landing files a real ad server's logs would leave.

    write_landing(cfg)             -> LandingSummary   landing files for cfg.synth's days
    build_world(seed, scale)       -> World            the same world, in memory

The click oracle lives in `osmf_lib.synth.oracle` and is deliberately not re-exported here:
only evaluation may import it.
"""

from osmf_lib.synth.landing import DaySummary, LandingSummary, write_landing
from osmf_lib.synth.world import SCALES, Scale, World, build_world

__all__ = ["SCALES", "DaySummary", "LandingSummary", "Scale", "World", "build_world", "write_landing"]
