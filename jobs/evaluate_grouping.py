"""Grade the night's groups against the simulated world's hidden segments and the oracle."""

from osmf_lib.evaluation import stages
from osmf_lib.job import main

if __name__ == "__main__":
    main("evaluate_grouping", stages.evaluate_grouping)
