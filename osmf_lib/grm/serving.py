"""The osmf-grm pyfunc as MLflow "models from code": logged by file, so no object is pickled."""

import mlflow

from osmf_lib.grm.registry import GrmPyfunc

mlflow.models.set_model(GrmPyfunc())
