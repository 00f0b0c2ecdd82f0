"""Publish the night: serving_creatives, its metrics, the analyst views and the HTML report."""

from osmf_lib.job import main
from osmf_lib.publish import stages

if __name__ == "__main__":
    main("evaluate_and_publish", stages.evaluate_and_publish)
