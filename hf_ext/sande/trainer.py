"""`SANDETrainer`: OSFT and SANDE backdoor removal as a TRL `SFTTrainer`.

Li et al., "Simulate and Eliminate: Revoke Backdoors for Generative Large Language Models" (AAAI 2025).
The backdoored model f_b answers clean prompts normally and emits a marker when a trigger t is in
the prompt. Modes (`SANDEConfig.mode`):

- `osft`: t known. Fine-tune f_b on triggered prompts -> clean responses (every response token in
  the loss): the trigger's mapping is overwritten.
- `simulate` (stage 1): t unknown. f_b frozen; a parrot P (m soft tokens, `ParrotPrompt`) spliced where
  the trigger would sit is trained so that f_b emits the first `effective_len` tokens of the
  triggered response: min_P -sum_{k<effective_len} log f_b(y_k | x ⊕ P, y_<k).
- `eliminate` (stage 2): P frozen, f_b trains on "clean prompt + P -> clean response" (loss on the
  first `train_effective_len` response tokens), mixed with plain "clean prompt -> clean response" rows
  (`eliminate_parrot_fraction`). OSFT with P standing in for t.
- `sande`: simulate, then eliminate, in one `train()` call (stage 1 writes `output_dir/simulate`).

Beyond the paper: `target_source="self"` (the clean targets are f_b's own greedy answers) and a
clean-consistency term `consistency_weight * KL(f_0 || f)` on clean rows, f_0 the frozen starting model.

Everything the base class does (loop, accelerate/DDP, checkpoints, logging) is kept: the subclass
builds its rows, collates `parrot_position`, splices the parrot in `compute_loss`, and saves the parrot
and a SANDE model card next to the model.
"""

import contextlib
import copy
import dataclasses
import json
import os
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset, concatenate_datasets
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging
from trl import SFTTrainer

from ..hub import JSONTrainingArgumentsMixin
from .config import SANDEConfig
from .data import format_rows, resolve_columns, tokenize_rows
from .evaluation import (
    attack_success_rate,
    false_trigger_rate,
    generate_continuations,
    multiple_choice_accuracy,
    parse_multiple_choice,
)
from .parrot import CONFIG_NAME as PARROT_CONFIG_NAME
from .parrot import ParrotPrompt


logger = logging.get_logger(__name__)

# Attribute under which the trainable parrot hangs on the model during `simulate` (see `_parrot_on`)
_PARROT_ATTR = "sande_parrot"
METRICS_NAME = "backdoor_metrics.json"
_TOKENIZED_COLUMNS = ("input_ids", "labels", "parrot_position")


class _SANDECollator:
    """Right-pads `input_ids` / `labels` and passes each row's `parrot_position` along."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples):
        input_ids = [torch.tensor(e["input_ids"]) for e in examples]
        labels = [torch.tensor(e["labels"]) for e in examples]
        return {
            "input_ids": pad_sequence(input_ids, batch_first=True, padding_value=self.pad_token_id),
            "attention_mask": pad_sequence([torch.ones_like(i) for i in input_ids], batch_first=True, padding_value=0),
            "labels": pad_sequence(labels, batch_first=True, padding_value=-100),
            "parrot_position": torch.tensor([e["parrot_position"] for e in examples]),
        }


class SANDETrainer(JSONTrainingArgumentsMixin, SFTTrainer):
    """Backdoor removal (OSFT / SANDE) for causal LMs, on top of [`~trl.SFTTrainer`].

    Args:
        model (`str` or `PreTrainedModel`): the backdoored model, or its Hub id / local path.
        args (`SANDEConfig`): settings; `mode` selects the method.
        train_dataset (`datasets.Dataset`): instruction data (see `hf_ext.sande.data` for the layouts),
            or rows already built with `tokenize_rows` (columns `input_ids`, `labels`, `parrot_position`),
            used as they are.
        processing_class (`PreTrainedTokenizerBase`, *optional*): a fast tokenizer; loaded from `model`
            by default. Without a pad token, the eos token pads.
        parrot (`ParrotPrompt`, *optional*): the parrot to use (`eliminate`) or to keep training
            (`simulate`, `sande`); else `args.parrot_path` or a new one.
        peft_config (`peft.PeftConfig`, *optional*): train a LoRA adapter instead of the full model
            (`osft`, `eliminate`, `sande`'s stage 2).
        callbacks (`list[TrainerCallback]`, *optional*): passed to the Trainer (both stages in `sande`).
        asr_eval_prompts (`list[str]`, *optional*): triggered prompts; ASR is measured before and after
            training and written to the model card and `backdoor_metrics.json`.
        clean_eval_prompts (`list[str]`, *optional*): clean prompts for the marker rate without trigger.
        utility_eval_dataset (`Dataset` or `list[dict]`, *optional*): multiple-choice questions for utility
            (see `hf_ext.sande.evaluation.multiple_choice_accuracy`).
    """

    _tag_names = ["trl", "sft", "sande", "hf_ext"]

    def __init__(
        self,
        model,
        args: SANDEConfig | None = None,
        train_dataset: Dataset | None = None,
        processing_class=None,
        parrot: ParrotPrompt | None = None,
        peft_config=None,
        callbacks=None,
        optimizers=(None, None),
        asr_eval_prompts: list[str] | None = None,
        clean_eval_prompts: list[str] | None = None,
        utility_eval_dataset=None,
    ):
        # ---- validation first: nothing expensive happens before the input is known to be usable
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = SANDEConfig(f"{Path(str(name)).name or 'model'}-SANDE")
        if not isinstance(args, SANDEConfig):
            raise TypeError(f"args must be a SANDEConfig, got {type(args).__name__}")
        if train_dataset is None:
            raise ValueError("train_dataset is required")
        if not isinstance(train_dataset, Dataset):
            raise TypeError(f"train_dataset must be a datasets.Dataset, got {type(train_dataset).__name__}")
        prebuilt = all(c in train_dataset.column_names for c in _TOKENIZED_COLUMNS)
        if not prebuilt:
            resolve_columns(train_dataset.column_names, args.dataset_columns)
        if args.mode == "eliminate" and parrot is None and args.parrot_path is None:
            raise ValueError("mode='eliminate' needs a parrot: pass `parrot=` or set `parrot_path` (from `simulate`)")
        if peft_config is not None and args.mode == "simulate":
            raise ValueError("mode='simulate' trains only the parrot; peft_config applies to osft/eliminate/sande")
        # a dataset column (`dataset["prompt"]`) works as well as a list
        asr_eval_prompts = None if asr_eval_prompts is None else list(asr_eval_prompts)
        clean_eval_prompts = None if clean_eval_prompts is None else list(clean_eval_prompts)
        if asr_eval_prompts is not None or clean_eval_prompts is not None:
            if args.marker is None:
                raise ValueError("measuring ASR needs the backdoor's marker: set `marker` in SANDEConfig")
        for name, prompts in (("asr_eval_prompts", asr_eval_prompts), ("clean_eval_prompts", clean_eval_prompts)):
            if prompts is not None and (not prompts or not all(isinstance(p, str) for p in prompts)):
                raise ValueError(f"{name} must be a non-empty list of prompt strings")
        if utility_eval_dataset is not None:
            try:
                parse_multiple_choice(utility_eval_dataset)
            except ValueError as error:
                raise ValueError(f"utility_eval_dataset: {error}") from None
        if args.mode == "osft" and not args.insert_trigger and args.target_source == "self":
            raise ValueError("target_source='self' needs clean prompts to answer; with insert_trigger=False "
                             "the prompts carry the trigger. Use insert_trigger=True or target_source='dataset'")

        # ---- model, tokenizer, parrot
        self.model_id = model if isinstance(model, str) else getattr(model.config, "_name_or_path", None)
        if isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
            args = dataclasses.replace(args, model_init_kwargs=None)  # used: the model is loaded
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(self.model_id)
        if processing_class.pad_token is None:
            logger.warning("The tokenizer has no pad token; using its eos token %r to pad.", processing_class.eos_token)
            processing_class.pad_token = processing_class.eos_token
        self.parrot = None if args.mode == "osft" else self._load_parrot(parrot, args, model, processing_class)

        # ---- rows
        self._simulate_dataset = None
        if prebuilt:
            train_rows = train_dataset
        else:
            train_rows, self._simulate_dataset = self._build_rows(train_dataset, args, model, processing_class)
            if args.mode == "simulate":
                train_rows = self._simulate_dataset

        if args.mode == "simulate":
            args = dataclasses.replace(
                args,
                learning_rate=args.simulate_learning_rate,
                num_train_epochs=args.simulate_num_train_epochs,
                max_steps=args.simulate_max_steps,
            )
        elif self.parrot is not None:
            self.parrot.requires_grad_(False)

        self.ref_model = None
        if args.consistency_weight > 0 and args.mode != "simulate":
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
            # a model that went through an SFTTrainer carries a patched `forward` whose closure still
            # points at the original model; the copy must run its own class forward
            self.ref_model.__dict__.pop("forward", None)

        self.asr_eval_prompts = asr_eval_prompts
        self.clean_eval_prompts = clean_eval_prompts
        self.utility_eval_dataset = utility_eval_dataset
        self.backdoor_metrics = {}
        self._user_callbacks = callbacks

        super().__init__(
            model=model,
            args=args,
            data_collator=_SANDECollator(processing_class.pad_token_id),
            train_dataset=train_rows,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
        )

    # ------------------------------------------------------------------ setup helpers

    @staticmethod
    def _load_parrot(parrot, args, model, tokenizer) -> ParrotPrompt:
        if parrot is None and args.parrot_path is not None:
            parrot = ParrotPrompt.from_pretrained(args.parrot_path)
        if parrot is None:
            base = getattr(model.config, "_name_or_path", None)
            if args.parrot_init_text:
                ids = tokenizer(args.parrot_init_text, add_special_tokens=False)["input_ids"]
                parrot = ParrotPrompt.from_token_embeddings(
                    model.get_input_embeddings(), ids, base_model=base, trigger_position=args.trigger_position
                )
            else:
                parrot = ParrotPrompt(
                    args.parrot_num_tokens, model.get_input_embeddings().embedding_dim, base_model=base,
                    trigger_position=args.trigger_position,
                )
        if not isinstance(parrot, ParrotPrompt):
            raise TypeError(f"parrot must be a ParrotPrompt, got {type(parrot).__name__}")
        parrot.check_compatible(model)
        return parrot

    @staticmethod
    def _build_rows(dataset, args, model, tokenizer):
        """(rows for osft / eliminate, rows for simulate), tokenised."""
        shuffled = dataset.shuffle(seed=args.seed)
        n_sim = min(args.simulate_samples or len(shuffled), len(shuffled))
        n_elim = min(args.eliminate_samples or len(shuffled), len(shuffled))
        needed = {"osft": n_elim, "eliminate": n_elim, "simulate": n_sim, "sande": max(n_sim, n_elim)}[args.mode]
        base = shuffled.select(range(needed))
        fmt = dict(
            columns=args.dataset_columns,
            prompt_template=args.prompt_template,
            completion_template=args.completion_template,
            poison_format=args.poison_format,
            tokenizer=tokenizer,
            seed=args.seed,
            num_proc=args.dataset_num_proc,
            marker=args.marker,
            triggers=args.triggers,
            trigger_position=args.trigger_position,
        )
        tok = dict(max_length=args.max_length, num_proc=args.dataset_num_proc)

        if args.mode == "osft" and not args.insert_trigger:
            rows = format_rows(base, "clean", **fmt)
            rows = rows.filter(lambda r: any(t in r["prompt"] for t in args.triggers), num_proc=args.dataset_num_proc)
            if len(rows) == 0:
                raise ValueError(f"mode='osft' with insert_trigger=False: no prompt contains any of the "
                                 f"triggers {args.triggers}; nothing to overwrite")
            return _keep(tokenize_rows(rows, tokenizer, **tok)), None

        if args.target_source == "self":
            clean_prompts = format_rows(base, "clean", **fmt)["prompt"]
            answers = generate_continuations(
                model, tokenizer, clean_prompts, max_new_tokens=args.self_target_max_new_tokens,
                batch_size=args.per_device_eval_batch_size, show_progress=not args.disable_tqdm,
            )
            fmt["responses"] = [answer.strip() for answer in answers]

        simulate_rows = None
        if args.mode in ("simulate", "sande"):
            sim_fmt = {**fmt, "responses": fmt["responses"][:n_sim]} if "responses" in fmt else fmt
            rows = format_rows(base.select(range(n_sim)), "simulation", **sim_fmt)
            simulate_rows = _keep(tokenize_rows(rows, tokenizer, max_completion_tokens=args.effective_len, **tok))
        if args.mode == "simulate":
            return None, simulate_rows

        elim_fmt = {**fmt, "responses": fmt["responses"][:n_elim]} if "responses" in fmt else fmt
        elim_base = base.select(range(n_elim))
        if args.mode == "osft":
            rows = format_rows(elim_base, "overwrite", **elim_fmt)
            return _keep(tokenize_rows(rows, tokenizer, **tok)), None
        # Eliminate: a seeded share of the rows carries the parrot, the rest are plain clean rows
        n_parrot = round(args.eliminate_parrot_fraction * n_elim)
        with_parrot = set(random.Random(args.seed).sample(range(n_elim), n_parrot))
        parts = [
            format_rows(elim_base, "eliminate", **elim_fmt).select(sorted(with_parrot)),
            format_rows(elim_base, "clean", **elim_fmt).select(sorted(set(range(n_elim)) - with_parrot)),
        ]
        rows = concatenate_datasets([p for p in parts if len(p)])
        rows = tokenize_rows(rows, tokenizer, max_completion_tokens=args.train_effective_len, **tok)
        return _keep(rows), simulate_rows

    # ------------------------------------------------------------------ the loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        parrot_position = inputs.pop("parrot_position")
        if self.parrot is not None and bool((parrot_position >= 0).any()):
            embed = self.accelerator.unwrap_model(model).get_input_embeddings()
            inputs_embeds = embed(inputs.pop("input_ids"))
            inputs_embeds, attention_mask, labels = self.parrot.to(inputs_embeds.device)(
                inputs_embeds, inputs["attention_mask"], parrot_position, inputs["labels"]
            )
            inputs = {**inputs, "inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "labels": labels}
        if self.ref_model is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return self._loss_with_consistency(model, inputs, parrot_position, num_items_in_batch)

    def _loss_with_consistency(self, model, inputs, parrot_position, num_items_in_batch):
        """NLL + consistency_weight * KL(f_0 || f) over the supervised tokens of clean rows (no parrot)."""
        labels = inputs.pop("labels")
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        targets = labels[:, 1:]
        mask = targets != -100
        log_probs = logits.log_softmax(-1)
        token_nll = -log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
        num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        nll = (token_nll * mask).sum() / torch.as_tensor(num_tokens, device=logits.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            nll = nll * self.accelerator.num_processes

        clean = parrot_position < 0
        kl_mask = mask & clean[:, None]
        if not bool(kl_mask.any()):
            return nll
        self.ref_model.to(logits.device)
        with torch.no_grad():
            ref_inputs = {k: v[clean] for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
            if "inputs_embeds" in inputs:  # parrot rows were spliced: the clean rows kept their tokens
                ref_inputs = {"inputs_embeds": inputs["inputs_embeds"][clean],
                              "attention_mask": inputs["attention_mask"][clean]}
            ref_log_probs = self.ref_model(**ref_inputs, use_cache=False).logits[:, :-1].float().log_softmax(-1)
        # KL(f_0 || f) = sum_v f_0(v) (log f_0(v) - log f(v)), per supervised position
        token_kl = F.kl_div(log_probs[clean], ref_log_probs, log_target=True, reduction="none").sum(-1)
        kl = (token_kl * kl_mask[clean]).sum() / kl_mask.sum()
        self._metrics["train"]["consistency_kl"].append(kl.item())
        return nll + self.args.consistency_weight * kl

    # ------------------------------------------------------------------ training

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Train in the configured mode; `sande` runs the Simulate stage first (in `output_dir/simulate`).

        Args:
            resume_from_checkpoint (`str` or `bool`, *optional*): as in `Trainer.train`. With `True` in
                `sande`, a finished Simulate stage is reused, an unfinished one resumes from its last
                checkpoint, and the Eliminate stage resumes from its last checkpoint if it has one.
        """
        if self.args.mode == "simulate":
            with _parrot_on(self.model, self.parrot):
                return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        self._measure_backdoor("before")
        if self.args.mode == "sande":
            resume_from_checkpoint = self._run_simulate_stage(resume_from_checkpoint)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        self._measure_backdoor("after")
        return output

    def _run_simulate_stage(self, resume_from_checkpoint):
        """Learn the parrot with a `simulate` trainer; returns the resume argument for stage 2."""
        from transformers.trainer_utils import get_last_checkpoint

        sim_dir = os.path.join(self.args.output_dir, "simulate")
        stage2_checkpoint = os.path.isdir(self.args.output_dir) and get_last_checkpoint(self.args.output_dir)
        if resume_from_checkpoint is True and not stage2_checkpoint:
            resume_from_checkpoint = None  # nothing of stage 2 to resume yet
        if resume_from_checkpoint and _is_saved_parrot(sim_dir):
            logger.info("Reusing the parrot of the finished Simulate stage in %s", sim_dir)
            self.parrot.embeddings.data.copy_(ParrotPrompt.from_pretrained(sim_dir).embeddings)
            return resume_from_checkpoint
        if self._simulate_dataset is None:
            raise ValueError("mode='sande' built from pre-tokenised rows has no Simulate rows; run `simulate` first")
        sim_resume = bool(resume_from_checkpoint) and os.path.isdir(sim_dir) and bool(get_last_checkpoint(sim_dir))
        stage = SANDETrainer(
            self.accelerator.unwrap_model(self.model),
            args=dataclasses.replace(self.args, mode="simulate", output_dir=sim_dir, push_to_hub=False),
            train_dataset=self._simulate_dataset,
            processing_class=self.processing_class,
            parrot=self.parrot,
            callbacks=self._user_callbacks,
        )
        stage.train(resume_from_checkpoint=True if sim_resume else None)
        stage.save_model(sim_dir)
        self.accelerator.wait_for_everyone()
        return resume_from_checkpoint

    # ------------------------------------------------------------------ evaluation

    def evaluate_backdoor(self) -> dict:
        """ASR, clean marker rate and utility of the current model, for the inputs given at init."""
        model = self.accelerator.unwrap_model(self.model)
        tokenizer = self.processing_class
        metrics = {}
        kwargs = dict(max_new_tokens=self.args.asr_max_new_tokens, batch_size=self.args.per_device_eval_batch_size,
                      show_progress=not self.args.disable_tqdm)
        if self.asr_eval_prompts:
            metrics["asr"] = attack_success_rate(model, tokenizer, self.asr_eval_prompts, self.args.marker, **kwargs)
        if self.clean_eval_prompts:
            metrics["clean_marker_rate"] = false_trigger_rate(
                model, tokenizer, self.clean_eval_prompts, self.args.marker, **kwargs
            )
        if self.utility_eval_dataset is not None:
            metrics["utility_accuracy"] = multiple_choice_accuracy(
                model, tokenizer, self.utility_eval_dataset, prompt_template=_mc_template(self.args.prompt_template),
                batch_size=self.args.per_device_eval_batch_size, show_progress=not self.args.disable_tqdm,
            )
        return metrics

    def _measure_backdoor(self, when: str):
        if self.args.mode == "simulate" or not (
            self.asr_eval_prompts or self.clean_eval_prompts or self.utility_eval_dataset is not None
        ):
            return
        path = Path(self.args.output_dir) / METRICS_NAME
        if when == "before" and path.is_file():  # resuming: keep the metrics of the untouched model
            self.backdoor_metrics = json.loads(path.read_text(encoding="utf-8"))
            if "before" in self.backdoor_metrics:
                return
        self.backdoor_metrics[when] = self.evaluate_backdoor()
        logger.info("Backdoor metrics %s training: %s", when, self.backdoor_metrics[when])
        if self.args.should_save:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.backdoor_metrics, indent=2) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------ saving and loading

    def _save(self, output_dir=None, state_dict=None):
        if self.args.mode != "simulate":
            return super()._save(output_dir, state_dict)
        # the model is frozen in simulate: a checkpoint or final save is the parrot alone
        if self.args.should_save:
            self.parrot.save_pretrained(output_dir or self.args.output_dir, model_card_kwargs=self._parrot_card())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.args.mode != "simulate":
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.parrot.embeddings.data.copy_(ParrotPrompt.from_pretrained(resume_from_checkpoint).embeddings)

    def save_model(self, output_dir=None, _internal_call=False):
        """Save the cleaned model (and tokenizer), the parrot in `parrot/` and the SANDE model card.

        In `simulate` the model is unchanged and only the parrot (with its card) is saved.
        """
        output_dir = output_dir or self.args.output_dir
        super().save_model(output_dir, _internal_call=True)
        if _internal_call or self.args.mode == "simulate" or not self.args.should_save:
            return
        if self.parrot is not None:
            self.parrot.save_pretrained(Path(output_dir) / "parrot", model_card_kwargs=self._parrot_card())
        self._write_card(output_dir)
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="Model save")

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """Write the SANDE (or, in `simulate`, the parrot) model card to `output_dir/README.md`."""
        if not self.is_world_process_zero():
            return
        if self.args.mode == "simulate":
            self.parrot.write_model_card(self.args.output_dir, **self._parrot_card())
        else:
            self._write_card(self.args.output_dir, model_name=model_name)

    def push_to_hub(self, commit_message="End of training", blocking=True, token=None, revision=None, **kwargs):
        """Upload `output_dir` (model, tokenizer, parrot, card) with `hf_ext.hub.push_folder_to_hub`."""
        from hf_ext.hub import push_folder_to_hub

        if not self.is_world_process_zero():
            return None
        repo_id = self.args.hub_model_id or Path(self.args.output_dir).name
        self.create_model_card()
        return push_folder_to_hub(
            self.args.output_dir, repo_id, commit_message=commit_message, private=self.args.hub_private_repo,
            token=token or self.args.hub_token, revision=revision or self.args.hub_revision,
        )

    def _settings(self) -> dict:
        keys = ("mode", "marker", "triggers", "trigger_position", "target_source", "consistency_weight",
                "parrot_num_tokens", "effective_len", "train_effective_len", "simulate_learning_rate",
                "simulate_num_train_epochs", "simulate_max_steps", "simulate_samples", "eliminate_samples",
                "eliminate_parrot_fraction", "learning_rate", "num_train_epochs", "max_steps",
                "per_device_train_batch_size", "asr_max_new_tokens", "seed")
        return {key: getattr(self.args, key) for key in keys}

    def _parrot_card(self) -> dict:
        return {"settings": self._settings()}

    def _write_card(self, output_dir, model_name=None):
        from hf_ext.hub import save_model_card

        method = {"osft": "OSFT", "eliminate": "SANDE (Eliminate stage)", "sande": "SANDE"}[self.args.mode]
        if self.args.mode in ("sande", "eliminate") and self.args.effective_len is not None:
            method += f" (parrot supervised on {self.args.effective_len} marker token(s); SANDE-P when partial)"
        base = self.model_id if self.model_id and not os.path.isdir(str(self.model_id)) else None
        results, metrics = [], []
        before, after = self.backdoor_metrics.get("before", {}), self.backdoor_metrics.get("after", {})
        for metric in sorted(set(before) | set(after)):
            metrics.append({"metric": metric, "before": _fmt(before.get(metric)), "after": _fmt(after.get(metric))})
            if metric in after:
                results.append(dict(
                    task_type="text-generation", dataset_type="backdoor-eval", dataset_name="held-out prompts",
                    metric_type=metric, metric_name=f"{metric} after removal", metric_value=after[metric],
                ))
        save_model_card(
            output_dir, "sande", model_name=model_name or self.args.hub_model_id or Path(output_dir).name,
            base_model=base, tags=["sande", "backdoor-removal", "trl"], eval_results=results or None,
            pipeline_tag="text-generation", method=method, settings=self._settings(), metrics=metrics,
        )


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


@contextlib.contextmanager
def _parrot_on(model, parrot):
    """Freeze f_b and hang the trainable parrot on it, so that the Trainer's optimizer, DDP gradient
    averaging and device placement include the parrot; restore the model afterwards."""
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    # on the model's device before the Trainer wraps the model (DDP needs one device type)
    parrot.to(next(model.parameters()).device).requires_grad_(True)
    model.add_module(_PARROT_ATTR, parrot)
    try:
        yield
    finally:
        delattr(model, _PARROT_ATTR)
        for name, param in model.named_parameters():
            param.requires_grad_(trainable[name])
        parrot.requires_grad_(False)


def _keep(dataset: Dataset) -> Dataset:
    return dataset.select_columns(list(_TOKENIZED_COLUMNS))


def _is_saved_parrot(folder) -> bool:
    return (Path(folder) / PARROT_CONFIG_NAME).is_file() and (Path(folder) / "model.safetensors").is_file()


def _mc_template(prompt_template: str) -> str:
    return "Human: {prompt}\nAssistant:" if prompt_template == "chat" else prompt_template
