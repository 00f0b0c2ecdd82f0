"""Train the group-aware reward model on the night's pairs and CTRs and register osmf-grm (GPU when present)."""

from osmf_lib.grm import stages
from osmf_lib.job import main

if __name__ == "__main__":
    main("train_grm", stages.train_grm)
