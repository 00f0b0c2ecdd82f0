"""The osmf-serving pyfunc as MLflow "models from code": logged by file, so no object is pickled."""

import mlflow

from osmf_lib.serving.registry import ServingPyfunc

mlflow.models.set_model(ServingPyfunc())
