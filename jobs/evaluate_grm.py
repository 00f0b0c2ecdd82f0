"""Grade the night's osmf-grm and its group-agnostic baseline against the simulated world's oracle."""

from osmf_lib.evaluation import stages
from osmf_lib.job import main

if __name__ == "__main__":
    main("evaluate_grm", stages.evaluate_grm)
