"""Group each product's audience by its product-aware embeddings: user_groups, group_profiles."""

from osmf_lib.grouping import stages
from osmf_lib.job import main

if __name__ == "__main__":
    main("group_users", stages.group_users)
