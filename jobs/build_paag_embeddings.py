"""Embed every (product, user) of each product's audience with osmf-paag@champion."""

from osmf_lib.job import main
from osmf_lib.paag import stages

if __name__ == "__main__":
    main("build_paag_embeddings", stages.build_paag_embeddings)
