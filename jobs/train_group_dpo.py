"""Group-DPO and its two baselines from the pre-trained G-MLLM; register osmf-gmllm (GPU when present)."""

from osmf_lib.gmllm import stages
from osmf_lib.job import main

if __name__ == "__main__":
    main("train_group_dpo", stages.train_group_dpo)
