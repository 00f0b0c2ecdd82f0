"""Check Spark + Delta, MLflow and the lakehouse root before the night starts."""

from osmf_lib import preflight
from osmf_lib.job import main

if __name__ == "__main__":
    main("preflight", preflight.preflight)
