"""Group-wise CTR of tonight's groups and their preference pairs: group_creative_ctr, group_preference_pairs."""

from osmf_lib.job import main
from osmf_lib.pairs import stages

if __name__ == "__main__":
    main("build_preference_pairs", stages.build_preference_pairs)
