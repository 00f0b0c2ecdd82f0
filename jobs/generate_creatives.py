"""Render the night's creatives per (product, group), best-of-N by the GRM; `--shard I/N` for N workers."""

from osmf_lib.job import main
from osmf_lib.render import stages

if __name__ == "__main__":
    main("generate_creatives", stages.generate_creatives, sharded=True)
