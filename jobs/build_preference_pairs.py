"""Group-wise CTR of tonight's groups and their preference pairs: group_creative_ctr, group_preference_pairs."""

from osmf_lib import pairs
from osmf_lib.job import main

if __name__ == "__main__":
    main("build_preference_pairs", pairs.run)
