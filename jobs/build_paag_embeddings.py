"""Embed every (product, user) of each product's audience with osmf-paag@champion."""

from osmf_lib import embeddings
from osmf_lib.job import main

if __name__ == "__main__":
    main("build_paag_embeddings", embeddings.build)
