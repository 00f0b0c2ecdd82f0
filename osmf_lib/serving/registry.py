"""osmf-serving in MLflow: the night's ServingNight as a pyfunc for the ad server (MLflow's scoring
server) and for consumers, and a loader for the pipeline's own Spark workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.types import DataType
from mlflow.types.schema import AnyType

from osmf_lib import tracking
from osmf_lib.night import SERVING
from osmf_lib.paag.model import INTERESTS, SINGLE_VALUED_ATTRIBUTES, USER_ATTRIBUTES
from osmf_lib.serving.model import ServingError, ServingNight

MODEL_NAME = SERVING.name
CHAMPION_URI = f"models:/{MODEL_NAME}@champion"
ARTIFACT = "serving"
REQUEST_COLUMNS = ("product_id", "user_id", *USER_ATTRIBUTES)
# Only the product is required: a request without a user id is placed by its attributes, and a
# missing attribute is an unknown one. Interests take any value: a JSON request whose rows name them
# only sometimes arrives with NaN in the others, which MLflow's array check refuses; PAAG reads a
# missing or malformed list as no interests.
OPTIONAL_INPUTS = ("user_id", *USER_ATTRIBUTES)


class ServingPyfunc(mlflow.pyfunc.PythonModel):
    """Requests in (product_id, optionally user_id and the user attributes); per row its group,
    creative, lineage and the reason (member, assigned, fallback, unknown product) out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.night = ServingNight.load(Path(context.artifacts[ARTIFACT])).prepare()

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        return self.night.assign(model_input)


def log_serving(night: ServingNight, example: pd.DataFrame, name: str = MODEL_NAME) -> str:
    """Log the night's serving model to the active run; return the model URI. `example`: a few
    requests in the input layout (REQUEST_COLUMNS), with at least one user's interests."""
    example = example.reindex(columns=list(REQUEST_COLUMNS)).astype(object)
    # None, not NaN: MLflow checks a column of NaN against the string type as a float column.
    example = example.where(example.notna(), None)
    strings = {column: DataType.string for column in ("product_id", "user_id", *SINGLE_VALUED_ATTRIBUTES)}
    signature = tracking.signature(example, night.assign(example), OPTIONAL_INPUTS, {**strings, INTERESTS: AnyType()})
    return tracking.log_folder_model(
        name,
        ARTIFACT,
        night.save,
        __file__,
        signature=signature,
        input_example=example,
        metadata={"groups_ds": night.groups_ds.isoformat(), "paag_version": night.paag_version},
    )


def load_serving(model_uri: str) -> ServingNight:
    """The ServingNight behind a logged osmf-serving (any MLflow model URI, e.g.
    models:/osmf-serving@champion); a missing or unreadable one fails naming the URI."""
    return tracking.load_logged(model_uri, lambda folder: ServingNight.load(folder / ARTIFACT), ServingError)


def start_scoring_server(tracking_uri: str, port: int, log: Path, model_uri: str = CHAMPION_URI) -> subprocess.Popen:
    """MLflow's scoring server for `model_uri` on 127.0.0.1:`port`, as the compose service runs
    it, writing to `log`. One torch thread: with more, torch's pool and the server's threads fight
    over a small machine's cores. The server execs uvicorn from PATH, so this environment's
    comes first."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    with log.open("w") as out:
        return subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
