"""The osmf-paag pyfunc as MLflow "models from code": logged by file, so no object is pickled."""

import mlflow

from osmf_lib.paag.registry import PaagPyfunc

mlflow.models.set_model(PaagPyfunc())
