"""Group-DPO (docs/design.md#group-dpo) on trl's DPOTrainer.

For a pair (x, y_w, y_l) of group g, with r(y|g) = log pi(y|x,g) - log ref(y|x,g):

    loss = sum_g w_g mean_pairs -log sigmoid(beta (r(y_w|g) - r(y_l|g)))
         + lambda mean_contrast -log sigmoid(beta (r(y_w|g) - sg[r(y_w|g')]))
         + alpha sum_g w_g mean_pairs -log pi(y_w|x,g) / |y_w|

w_g makes every (product, group) weigh the same whatever its number of pairs; g' is a group of the
same product that rejected y_w (it has the opposite pair, or its judge scores y_w below y_l), so
the contrast term makes a group's answer likelier for that group than for one that did not want
it. sg[] stops the gradient: letting it flow into g' too (the founding form) only pushes y_w down
under g' a second time, as g's opposite pair already does, at the price of one more backward
pass, and measured the same (docs/results.md#g-mllm-and-group-dpo). The last term
(`group_dpo.sft_weight`, RPO's anchor) keeps the chosen answers likely: without it the tiny model
drifted into repeated phrases and empty answers within one epoch. lambda = 0 is "DPO with the
group prefix"; a model whose group input is always empty is "one-size-fits-all DPO".

trl does the rest: tokenizing prompt/chosen/rejected, padding, the optimiser loop, logging, and the
fused LM head that turns the backbone's hidden states into per-token log-probabilities. The
collator adds the prefix inputs (trl stacks chosen rows before rejected ones, so they are stacked
the same way); the reference is an explicit frozen copy of the pre-trained model, projectors
included, so the trained prefix never leaks into the reference pass.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from datasets import Dataset
from torch.nn import functional as F
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from osmf_lib.config import Config
from osmf_lib.device import resolve_device
from osmf_lib.gmllm.generator import Gmllm
from osmf_lib.gmllm.model import GmllmModel

NO_CONTRAST = -1
PAIR_COLUMNS = ("product_id", "group_id", "chosen_prompt", "rejected_prompt", "contrast_group")


@dataclass
class GroupPreferenceCollator(DataCollatorForPreference):
    """trl's preference collator plus the prefix inputs of each row, looked up by row index."""

    groups: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    contrast: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    products: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        rows = torch.tensor([e["row"] for e in examples])
        batch["group_features"] = self.groups[rows].repeat(2, 1)
        batch["product_features"] = self.products[rows].repeat(2, 1)
        batch["contrast_features"] = self.contrast[rows]
        batch["has_contrast"] = torch.tensor([e["has_contrast"] for e in examples], dtype=torch.bool)
        batch["weight"] = torch.tensor([e["weight"] for e in examples], dtype=torch.float32)
        return batch


@dataclass
class GroupDPOConfig(DPOConfig):
    """trl's DPOConfig plus the weights of Group-DPO's two extra terms (see the module doc).

    Group-DPO computes its own loss, so the DPOConfig options that pick or reshape another loss
    would be silently ignored: `GroupDPOTrainer` refuses them (`IGNORED_OPTIONS`).
    """

    contrast_weight: float = field(
        default=0.0,
        metadata={
            "help": "lambda of the group-contrast term: how much more likely a group's chosen answer must "
            "become under its own group than under a group of the same product that rejected it. "
            "0 trains 'DPO with the group prefix'."
        },
    )
    sft_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the chosen answers' per-token NLL next to the DPO terms (RPO's anchor, "
            "arXiv 2404.19733): it keeps the policy writing finished descriptions while preferences move."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("contrast_weight", "sft_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"GroupDPOConfig.{name} must be >= 0, got {getattr(self, name)}")


# DPOConfig options with no effect on Group-DPO's loss, with the value that means "off".
IGNORED_OPTIONS: dict[str, object] = {
    "loss_type": ["sigmoid"],
    "label_smoothing": 0.0,
    "f_divergence_type": "reverse_kl",
    "use_weighting": False,
    "ld_alpha": None,
    "loss_weights": None,
    # The reference's log-probabilities are computed in compute_loss, with the prefix inputs.
    "precompute_ref_log_probs": False,
}


class GroupDPOTrainer(DPOTrainer):
    """DPOTrainer with group-balanced weights, the group-contrast term and the NLL anchor, weighted
    by `args` (a GroupDPOConfig)."""

    _EXTRA = ("contrast_features", "has_contrast", "weight")
    _NOT_MODEL = ("completion_mask", *_EXTRA)

    def __init__(self, model: torch.nn.Module, ref_model: torch.nn.Module, args: GroupDPOConfig, **kwargs: Any) -> None:
        if not isinstance(args, GroupDPOConfig):
            raise TypeError(f"GroupDPOTrainer needs args=GroupDPOConfig(...), got {type(args).__name__}")
        for option, off in IGNORED_OPTIONS.items():
            value = getattr(args, option)
            if value != off and not (isinstance(off, list) and value == off[0]):
                raise ValueError(
                    f"GroupDPOTrainer computes its own loss and would ignore {option}={value!r}; leave it at {off!r}"
                )
        super().__init__(model=model, ref_model=ref_model, args=args, **kwargs)

    def _logps(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], rows: slice, **override) -> torch.Tensor:
        kwargs = {k: v[rows] for k, v in inputs.items() if k not in self._NOT_MODEL}
        kwargs.update(override)
        labels = kwargs["input_ids"].masked_fill(inputs["completion_mask"][rows] == 0, -100)
        return model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False).log_probs.sum(1)

    def _ratio(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], rows: slice, **override
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi - log ref, log pi) of the rows' completions."""
        policy = self._logps(model, inputs, rows, **override)
        with torch.no_grad():
            reference = self._logps(self.ref_model, inputs, rows, **override)
        return policy - reference, policy

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        n = inputs["weight"].shape[0]
        ratio, policy = self._ratio(model, inputs, slice(None))
        chosen, rejected = ratio[:n], ratio[n:]
        weight = inputs["weight"]
        margin = self.beta * (chosen - rejected)
        loss = (weight * -F.logsigmoid(margin)).sum() / weight.sum()
        metrics = self._metrics[mode]
        metrics["rewards/accuracies"].append((margin > 0).float().mean().item())
        metrics["rewards/margins"].append(margin.mean().item())
        metrics["loss/dpo"].append(loss.item())
        if self.args.sft_weight > 0:
            # RPO's anchor: DPO alone may lower both answers' likelihood until the model no longer
            # writes a finished description; the chosen answer's per-token NLL keeps it writing.
            tokens = inputs["completion_mask"][:n].sum(1).clamp(min=1)
            nll = (weight * -policy[:n] / tokens).sum() / weight.sum()
            loss = loss + self.args.sft_weight * nll
            metrics["loss/sft"].append(nll.item())
        has = inputs["has_contrast"]
        if self.args.contrast_weight > 0 and has.any():
            # The other group's pass is a fixed target: pushing y_w down under g' as well (its own
            # DPO term already does) drove the policy's outputs for g' off course (see the module doc).
            with torch.no_grad():
                other, _ = self._ratio(model, inputs, slice(None, n), group_features=inputs["contrast_features"])
            contrast = -F.logsigmoid(self.beta * (chosen - other))
            w = weight * has
            contrast_loss = (w * contrast).sum() / w.sum()
            loss = loss + self.args.contrast_weight * contrast_loss
            metrics["loss/contrast"].append(contrast_loss.item())
        return loss


def balanced_weights(pairs: pd.DataFrame) -> pd.Series:
    """w per pair: every (product, group) weighs the same in total, mean weight 1."""
    per_group = pairs.groupby(["product_id", "group_id"])["product_id"].transform("size")
    weights = 1.0 / per_group
    return weights * len(pairs) / weights.sum()


def preference_data(
    gmllm: Gmllm, pairs: pd.DataFrame, profiles: pd.DataFrame, products: pd.DataFrame
) -> tuple[Dataset, GroupPreferenceCollator]:
    """trl's dataset (prompt, chosen, rejected + row, weight, has_contrast) and its collator.

    pairs: PAIR_COLUMNS; contrast_group NO_CONTRAST where no group of the product rejected y_w."""
    pairs = pairs.reset_index(drop=True)
    groups, product_features = gmllm.prefix_inputs(pairs, profiles, products)
    has_contrast = (pairs["contrast_group"] != NO_CONTRAST).to_numpy()
    contrast = torch.zeros_like(groups)
    if has_contrast.any():
        others = pairs.loc[has_contrast, ["product_id"]].assign(group_id=pairs.loc[has_contrast, "contrast_group"])
        contrast[torch.from_numpy(has_contrast)] = gmllm.prefix_inputs(others, profiles, products)[0]
    dataset = Dataset.from_dict(
        {
            "prompt": gmllm.instructions(pairs, products),
            "chosen": pairs["chosen_prompt"].map(lambda p: " " + p).tolist(),
            "rejected": pairs["rejected_prompt"].map(lambda p: " " + p).tolist(),
            "row": list(range(len(pairs))),
            "weight": balanced_weights(pairs).tolist(),
            "has_contrast": has_contrast.tolist(),
        }
    )
    collator = GroupPreferenceCollator(
        pad_token_id=gmllm.tokenizer.pad_token_id,
        max_length=gmllm.model.text_context,
        groups=groups,
        contrast=contrast,
        products=product_features,
    )
    return dataset, collator


def frozen_copy(model: GmllmModel) -> GmllmModel:
    """The reference: a separate frozen copy, projectors included."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def dpo_args(scratch: str, gmllm: Gmllm, cfg: Config, contrast_weight: float = 0.0) -> GroupDPOConfig:
    """trl's settings for one Group-DPO run of `gmllm` (checkpoints and logs to `scratch`, never kept)."""
    d = cfg.group_dpo
    cuda = resolve_device(cfg.gpu.device).type == "cuda"
    return GroupDPOConfig(
        output_dir=scratch,
        contrast_weight=contrast_weight,
        sft_weight=d.sft_weight,
        beta=d.beta,
        learning_rate=d.learning_rate,
        num_train_epochs=d.epochs,
        per_device_train_batch_size=d.batch_size,
        lr_scheduler_type="constant",
        remove_unused_columns=False,
        # Longer sequences are cut to the context; a pair whose prompt alone fills it is dropped by trl.
        max_length=gmllm.model.text_context,
        activation_checkpointing=False,
        precompute_ref_log_probs=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        seed=cfg.gmllm.seed,
        use_cpu=not cuda,
        # trl turns bf16 on by default; on a CPU without bf16 units autocast made a step 4.8x slower.
        bf16=cuda and torch.cuda.is_bf16_supported(),
        dataset_num_proc=None,
    )


def train_dpo(
    gmllm: Gmllm,
    reference: GmllmModel,
    pairs: pd.DataFrame,
    profiles: pd.DataFrame,
    products: pd.DataFrame,
    cfg: Config,
    contrast_weight: float,
) -> dict[str, float]:
    """Train gmllm.model in place on the pairs against the frozen reference; trl's last log out."""
    dataset, collator = preference_data(gmllm, pairs, profiles, products)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = GroupDPOTrainer(
            model=gmllm.model,
            ref_model=reference,
            args=dpo_args(scratch, gmllm, cfg, contrast_weight),
            data_collator=collator,
            train_dataset=dataset,
            processing_class=gmllm.tokenizer,
        )
        trainer.train()
        history = [entry for entry in trainer.state.log_history if "loss" in entry]
    gmllm.model.eval()
    return history[-1] if history else {}
