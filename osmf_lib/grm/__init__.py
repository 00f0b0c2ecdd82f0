"""GRM: the group-aware reward model (docs/design.md#grm).

    fit_grm(cells, pairs, profiles, products, cfg, group_aware=True) -> TrainedGrm
    evaluate(grm, cells, pairs, profiles, products=None)              -> held-out metrics
    log_grm(trained, cfg, name, ds)                                    -> model URI (in an active run)
    load_grm(model_uri, device="cpu", unreadable_image="fail")         -> Grm

`Grm.score(rows, profiles=None, products=None)` gives a click logit per (product_id, group_id,
prompt) row: higher means the group is likelier to click an ad with that background. Groups are
the night's attribute profiles (osmf_lib.inputs.attribute_profiles); without `profiles`, the
ones of the night the model was trained for, which it carries.

Consumers without this package load the pyfunc instead:
`mlflow.pyfunc.load_model("models:/osmf-grm@champion").predict(df)` with df holding product_id,
group_id and prompt; it returns one `score` per row. It carries this package's code and loads in a
Python with only its logged requirements.
"""

from osmf_lib.grm.features import GrmError
from osmf_lib.grm.model import Grm
from osmf_lib.grm.registry import GrmPyfunc, load_grm, log_grm
from osmf_lib.grm.train import TrainedGrm, evaluate, fit_grm

__all__ = ["Grm", "GrmError", "GrmPyfunc", "TrainedGrm", "evaluate", "fit_grm", "load_grm", "log_grm"]
