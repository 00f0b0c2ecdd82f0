"""PAAG: product-aware user embeddings (docs/design.md#paag).

    fit_paag(examples, products, creatives, cfg, product_aware=True) -> TrainedPaag
    embed(model, pairs, products=None)                                  -> np.ndarray (n, embedding_dim)
    log_paag(trained, cfg, name="osmf-paag")                            -> model URI (in an active run)
    load_paag(model_uri, device="cpu", unreadable_image="fail")         -> Paag, for pandas UDFs

Consumers without this package's API load the pyfunc instead:
`mlflow.pyfunc.load_model("models:/osmf-paag@champion").predict(df)`, where df holds product_id,
user_id, the user columns (USER_ATTRIBUTES) and product_title, product_category, product_image_uri;
it returns one `embedding` (list of floats) per row. The pyfunc carries this package's code and
loads in a Python with only its logged requirements.

A product without a picture (a null or empty image_uri) is embedded from its text alone; one whose
image cannot be read fails with a PaagError, or with models.unreadable_image "text_only" counts as
one without a picture and is listed in `Paag.unreadable_images` (features.py has the details).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from osmf_lib.paag.features import PaagError
from osmf_lib.paag.model import PAIR_PRODUCT_COLUMNS, SINGLE_VALUED_ATTRIBUTES, USER_ATTRIBUTES, Paag
from osmf_lib.paag.registry import PaagPyfunc, load_paag, log_paag
from osmf_lib.paag.train import EXAMPLE_COLUMNS, TrainedPaag, fit_paag, validation_users


def embed(model: Paag | TrainedPaag, pairs: pd.DataFrame, products: pd.DataFrame | None = None) -> np.ndarray:
    """Product-aware user embeddings of (product, user) pairs; see `Paag.embed`."""
    paag = model.paag if isinstance(model, TrainedPaag) else model
    return paag.embed(pairs, products)


__all__ = [
    "EXAMPLE_COLUMNS",
    "PAIR_PRODUCT_COLUMNS",
    "SINGLE_VALUED_ATTRIBUTES",
    "USER_ATTRIBUTES",
    "Paag",
    "PaagError",
    "PaagPyfunc",
    "TrainedPaag",
    "embed",
    "fit_paag",
    "load_paag",
    "log_paag",
    "validation_users",
]
