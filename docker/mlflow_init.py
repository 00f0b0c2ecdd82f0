"""mlflow-init: MLflow's users for the compose deployment, and the pipeline's experiment.

Runs as MLflow's admin (MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD)
once the server answers. Safe to rerun: a user that exists gets the password .env holds now.

- `osmf-pipeline` (MLFLOW_PIPELINE_PASSWORD), the identity of everything that runs the night.
  What it creates needs no grant: basic-auth gives whoever creates an experiment or a registered
  model MANAGE on it.
- `osmf-serving` (MLFLOW_SERVING_PASSWORD), the serving endpoint's: the server's
  default_permission (READ) lets it load the champion and nothing more of the pipeline's.
"""

from __future__ import annotations

import os

from mlflow.exceptions import RestException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.server.auth.client import AuthServiceClient
from mlflow.store.tracking.rest_store import RestStore
from mlflow.utils.rest_utils import MlflowHostCreds

from osmf_lib.config import load_config

PIPELINE = "osmf-pipeline"
USERS = {PIPELINE: "MLFLOW_PIPELINE_PASSWORD", "osmf-serving": "MLFLOW_SERVING_PASSWORD"}


def set_user(admin: AuthServiceClient, username: str, password: str) -> str:
    try:
        admin.get_user(username)
    except RestException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        admin.create_user(username, password)
        return "created"
    admin.update_user_password(username, password)
    return "password set"


def pipeline_experiment(tracking_uri: str, name: str, password: str) -> str:
    """The experiment the pipeline logs to, created as the pipeline so that it owns it.

    Created without an artifact location, so the server puts it at mlflow-artifacts:/<id>: the
    auth app tells whose artifacts an upload or download touches from that id, and refuses
    writes under any other path.
    """
    store = RestStore(lambda: MlflowHostCreds(tracking_uri, username=PIPELINE, password=password))
    experiment = store.get_experiment_by_name(name)
    if experiment is None:
        experiment = store.get_experiment(store.create_experiment(name))
    expected = f"mlflow-artifacts:/{experiment.experiment_id}"
    if experiment.artifact_location != expected:
        raise SystemExit(
            f"mlflow-init: experiment {name!r} keeps its artifacts at {experiment.artifact_location}, not "
            f"{expected} through the server, where its permissions apply: rename it in MLflow "
            "(or set mlflow.experiment to a new name) and run mlflow-init again"
        )
    return experiment.experiment_id


def main() -> None:
    tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
    admin = AuthServiceClient(tracking_uri)
    for username, variable in USERS.items():
        print(f"mlflow-init: user {username}: {set_user(admin, username, os.environ[variable])}")
    name = load_config().mlflow.experiment
    experiment_id = pipeline_experiment(tracking_uri, name, os.environ[USERS[PIPELINE]])
    # Only an experiment someone else created (by hand, or before authentication) needs this.
    if admin.get_user_permission(PIPELINE, "experiment", experiment_id).permission != "MANAGE":
        admin.grant_user_permission(PIPELINE, "experiment", experiment_id, "MANAGE")
    print(f"mlflow-init: experiment {name} = {experiment_id}, managed by {PIPELINE}")


if __name__ == "__main__":
    main()
