"""Publish the night: serving_creatives, its metrics, the analyst views and the HTML report."""

from osmf_lib import publish
from osmf_lib.job import main

if __name__ == "__main__":
    main("evaluate_and_publish", publish.evaluate_and_publish)
