"""Grade the night's osmf-grm and its group-agnostic baseline against the simulated world's oracle."""

from osmf_lib import evaluate_grm
from osmf_lib.job import main

if __name__ == "__main__":
    main("evaluate_grm", evaluate_grm.run)
