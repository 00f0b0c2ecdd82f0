"""Grade the night's generators against the simulated world's oracle (a logged skip on real logs)."""

from osmf_lib.evaluation import stages
from osmf_lib.job import main

if __name__ == "__main__":
    main("evaluate_gmllm", stages.evaluate_gmllm)
