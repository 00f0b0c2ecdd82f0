"""Train the PAAG encoder on the look-back window and register osmf-paag (GPU when present)."""

from osmf_lib.job import main
from osmf_lib.paag import stages

if __name__ == "__main__":
    main("train_paag", stages.train_paag)
