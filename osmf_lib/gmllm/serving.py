"""The osmf-gmllm pyfunc as MLflow "models from code": logged by file, so no object is pickled."""

import mlflow

from osmf_lib.gmllm.registry import GmllmPyfunc

mlflow.models.set_model(GmllmPyfunc())
