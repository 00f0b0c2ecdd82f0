"""Train the PAAG encoder on the look-back window and register osmf-paag (GPU when present)."""

from osmf_lib import embeddings
from osmf_lib.job import main

if __name__ == "__main__":
    main("train_paag", embeddings.train)
