"""Pre-train the G-MLLM on the night's four tasks and register osmf-gmllm-base (GPU when present)."""

from osmf_lib.gmllm import stages
from osmf_lib.job import main

if __name__ == "__main__":
    main("pretrain_gmllm", stages.pretrain_gmllm)
