"""Ingest the day's landing files: impressions, rejected lines, and user/product/creative upserts."""

from osmf_lib.ingest import stages
from osmf_lib.job import main

if __name__ == "__main__":
    main("ingest_events", stages.ingest_events)
