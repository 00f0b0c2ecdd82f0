"""G-MLLM: the group-aware prompt generator (docs/design.md#g-mllm) and its Group-DPO alignment (#group-dpo).

    base_checkpoint(cfg, texts) -> the profile's language model folder (tiny: built from texts)
    new_gmllm(folder, group_dim, product_dim, cfg)   -> (GmllmModel, tokenizer) with fresh projectors
    pretraining_examples(cells, groups, products, cfg) / encode / fit   -> the four pre-training tasks
    train_dpo(gmllm, reference, pairs, profiles, products, cfg, contrast_weight)   -> Group-DPO on trl
    log_gmllm(gmllm, name, ds, example) / load_gmllm(model_uri)

`Gmllm.write(rows, profiles=None, products=None, samples=0)` writes background descriptions for
(product_id, group_id) rows, greedy or sampled, each flagged `usable` (fit to render).

Consumers without this package load the pyfunc:
`mlflow.pyfunc.load_model("models:/osmf-gmllm@champion").predict(df)` with df holding product_id
and group_id (groups of the night it was trained for); it returns prompt and usable per row.
"""

from osmf_lib.gmllm.base import base_checkpoint, new_gmllm
from osmf_lib.gmllm.dpo import GroupDPOConfig, GroupDPOTrainer, train_dpo
from osmf_lib.gmllm.features import GmllmError
from osmf_lib.gmllm.generator import Gmllm
from osmf_lib.gmllm.registry import GmllmPyfunc, load_gmllm, log_gmllm
from osmf_lib.gmllm.train import encode, fit, pretraining_examples

__all__ = [
    "Gmllm",
    "GmllmError",
    "GmllmPyfunc",
    "GroupDPOConfig",
    "GroupDPOTrainer",
    "base_checkpoint",
    "encode",
    "fit",
    "load_gmllm",
    "log_gmllm",
    "new_gmllm",
    "pretraining_examples",
    "train_dpo",
]
