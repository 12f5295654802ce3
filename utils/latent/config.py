"""One typed configuration of the notebook-04 experiment, built from the notebook's parameters by name.

:class:`ExperimentConfig` holds what the experiment does (data, split, evaluation, the per-context ceiling,
the amortisation run, budget, resume) and, in ``train``, the :class:`.compressor.TrainConfig` that every
checkpoint saves. Both take their values from the notebook's parameters *by name*
(:meth:`ExperimentConfig.from_params`): a parameter is a field of exactly one of them, nothing is renamed,
and the defaults here are the notebook's (a test compares them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .compressor import TrainConfig


class ConfigError(ValueError):
    """A parameter value the experiment cannot use; the message names it and the fix."""


def _floats(s: str) -> list[float]:
    return [float(x) for x in str(s).split(",") if x.strip()]


@dataclass
class ExperimentConfig:
    model: str = "smollm2"
    data: str = "auto"
    checkpoint: str = "auto"
    seeds: str = "0"
    min_eval_questions: int = 900
    dev_articles: int = 1
    split_seed: int = 0
    max_eval_contexts: int = 15
    max_train_contexts: int = 0
    n_train_paragraphs: int = 200
    n_eval_paragraphs: int = 60
    system_prompt: str = (
        "Extract the answer from the context. Reply with the answer words only.\nExample: Context: Tom Hill lives "
        "in Rome. Ada Park plays the flute every evening.\nQuestion: Which instrument does Ada Park play?\n"
        "Answer: flute"
    )
    anchor_text: str = "Answer:"
    max_new_tokens: int = 8
    kd_topk: int = 32
    recall_per_context: int = 6
    n_boot: int = 2000
    optimise_contexts: int = 2
    optimise_steps: int = 200
    optimise_lr: float = 0.01
    optimise_batch: int = 4
    optimise_budget_s: float = 240.0
    amortise_contexts: int = 0
    amortise_dev_contexts: int = 6
    amortise_steps: int = 60
    amortise_weight: float = 1.0
    budget_s: float = 0.0
    resume: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)

    POSITIVE = ("max_new_tokens", "kd_topk", "min_eval_questions", "optimise_batch", "optimise_lr", "n_boot")
    NONNEGATIVE = (
        "max_eval_contexts",
        "max_train_contexts",
        "recall_per_context",
        "optimise_contexts",
        "optimise_steps",
        "optimise_budget_s",
        "amortise_contexts",
        "amortise_dev_contexts",
        "amortise_steps",
        "amortise_weight",
        "budget_s",
        "dev_articles",
    )
    TRAIN_POSITIVE = ("train_batch_size", "K", "d_enc", "enc_layers")
    TRAIN_NONNEGATIVE = ("salience_steps", "recall_steps", "qa_steps")

    @classmethod
    def all_positive(cls) -> tuple[str, ...]:
        """The parameters (of both configurations) that must be > 0."""
        return cls.POSITIVE + cls.TRAIN_POSITIVE

    @classmethod
    def all_nonnegative(cls) -> tuple[str, ...]:
        return cls.NONNEGATIVE + cls.TRAIN_NONNEGATIVE

    @classmethod
    def from_params(cls, params: dict) -> "ExperimentConfig":
        """The configuration of a parameter namespace (e.g. the notebook's ``globals()``): each field of this
        class and of :class:`TrainConfig` takes the value of the parameter of the same name when present."""
        own = {f.name for f in fields(cls)} - {"train"}
        tr = {f.name for f in fields(TrainConfig)}
        train = TrainConfig(**{k: params[k] for k in tr if k in params})
        cfg = cls(**{k: params[k] for k in own if k in params}, train=train)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Refuse values no run can use, naming the parameter."""

        def value(k):
            return getattr(self.train if hasattr(self.train, k) else self, k)

        bad = [k for k in self.all_positive() if not value(k) > 0]
        neg = [k for k in self.all_nonnegative() if not value(k) >= 0]
        if bad or neg:
            what = [f"{k} must be > 0" for k in bad] + [f"{k} must be >= 0" for k in neg]
            raise ConfigError("parameter " + "; ".join(what))
        try:
            ratios, seeds = self.ratio_list, self.seed_list
        except ValueError as e:
            raise ConfigError(f"ratios={self.train.ratios!r} / seeds={self.seeds!r}: not comma lists ({e})") from None
        if not ratios or min(ratios) <= 1:
            raise ConfigError(f"ratios={self.train.ratios!r}: give compression ratios above 1, e.g. 4,10,6")
        if not seeds:
            raise ConfigError(f"seeds={self.seeds!r}: give at least one training seed, e.g. 0 or 0,1,2")
        if self.train.amp not in ("auto", "bf16", "off"):
            raise ConfigError(f"amp={self.train.amp!r}: use auto (bf16 autocast on a GPU), bf16 or off")

    @property
    def ratio_list(self) -> list[float]:
        """The evaluated ratios, most decisive first (the first is the main ratio)."""
        return _floats(self.train.ratios)

    @property
    def seed_list(self) -> list[int]:
        return [int(x) for x in str(self.seeds).split(",") if x.strip()]

    @property
    def main_ratio(self) -> float:
        return self.ratio_list[0]

    def as_dict(self) -> dict:
        return asdict(self)
