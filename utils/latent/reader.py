"""The frozen reader of notebook 04 as one object: the causal LM, its tokenizer, the shared chat scaffold and
the key/values of the scaffold's fixed prefix (computed once, shared by every prompt of a run).

Everything that runs the reader takes a :class:`Reader`: greedy answers (:meth:`Reader.generate`), cached
hidden states (:meth:`Reader.hidden`), the training losses (:mod:`.train`) and the per-context optimisation
(:mod:`.optimise`). :meth:`Reader.check_checkpoint` refuses a compressor trained for another reader before
anything indexes a layer or an embedding it does not have.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .cache import KV, cache_hidden, prefix_kv
from .compressor import CheckpointError, TrainConfig
from .evaluate import generate_grouped
from .prompts import Scaffold, decoder_layers, input_embedding, make_scaffold, token_embedding_rms


@dataclass
class Reader:
    model: torch.nn.Module
    tokenizer: object
    scaffold: Scaffold
    prefix: KV  # the scaffold prefix's key/values, batch 1 (``prefix.expand(B)`` for a batch)
    spec: str = ""  # the model as the user named it
    _rms: float | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls, spec: str, system_prompt: str, anchor: str, device: str = "cpu", dtype: torch.dtype = torch.float32
    ) -> "Reader":
        """Load model ``spec`` (:func:`utils.weights.load_model`) and build its scaffold and prefix cache."""
        from ..weights import load_model

        model, tok = load_model(spec, dtype=dtype, device=device)
        return cls.wrap(model, tok, system_prompt, anchor, spec)

    @classmethod
    def wrap(cls, model, tokenizer, system_prompt: str, anchor: str, spec: str = "") -> "Reader":
        """A reader around a loaded model; its parameters are frozen."""
        for p in model.parameters():
            p.requires_grad_(False)
        sc = make_scaffold(tokenizer, system_prompt=system_prompt, anchor=anchor)
        return cls(model, tokenizer, sc, prefix_kv(model, sc.pre_ids), spec)

    # -- what it is ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return input_embedding(self.model).weight.device

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    @property
    def d_model(self) -> int:
        return int(input_embedding(self.model).weight.shape[1])

    @property
    def n_layers(self) -> int:
        layers = decoder_layers(self.model)
        return len(layers) if layers is not None else 0

    @property
    def vocab(self) -> int:
        return int(input_embedding(self.model).weight.shape[0])

    @property
    def target_rms(self) -> float:
        """RMS of the real token embedding entries (what continuous slots are scaled to)."""
        if self._rms is None:
            self._rms = token_embedding_rms(self.model)
        return self._rms

    def identity(self) -> dict:
        """What a checkpoint records about the reader it was trained for."""
        return {"model": self.spec, "d_model": self.d_model, "n_layers": self.n_layers, "vocab": self.vocab}

    def settings(self) -> dict:
        """What a stored result of this reader depends on: its identity, the scaffold's prompt prefix (system
        prompt; a hash of its ids) and the weights' dtype."""
        prefix = hashlib.sha1(self.scaffold.pre_ids.numpy().tobytes()).hexdigest()[:12]
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return {**self.identity(), "prefix": prefix, "dtype": dtype}

    def check_checkpoint(self, meta: dict, path) -> None:
        """Refuse a compressor checkpoint (its ``config.json`` as ``meta``) trained for another reader: another
        embedding width, vocabulary or depth, or hidden layers this reader does not have, named with the fix."""
        saved = meta.get("reader") or {"model": meta.get("model"), "d_model": meta.get("d_model")}
        layers = TrainConfig.from_dict(meta.get("config", {})).layers
        problems = [
            f"{what} {saved[k]} (this reader: {getattr(self, k)})"
            for k, what in (("d_model", "embedding width"), ("vocab", "vocabulary"), ("n_layers", "decoder layers"))
            if saved.get(k) is not None and int(saved[k]) != getattr(self, k)
        ]
        if layers and max(layers) > self.n_layers:
            problems.append(f"hidden layers {','.join(map(str, layers))} (this reader has {self.n_layers})")
        if problems:
            raise CheckpointError(
                f"the compressor {path} was trained for the reader {saved.get('model')!r}, not {self.spec!r}: it "
                f"expects {'; '.join(problems)}. Evaluate it with model={saved.get('model')!r}, or train a "
                "compressor for this reader with checkpoint=''"
            )

    # -- running it --------------------------------------------------------------------------------
    def hidden(self, ctx_ids: Sequence[torch.Tensor], cfg: TrainConfig, progress: Callable | None = None) -> list:
        """Per context: the cached hidden states the compressors read (``cfg.layers``, echo or not)."""
        return cache_hidden(self.model, ctx_ids, cfg.layers, cfg.echo, progress=progress)

    def generate(
        self,
        slots: Sequence[torch.Tensor],
        questions: Sequence[tuple[int, torch.Tensor]],
        max_new_tokens: int,
        progress: Callable | None = None,
    ) -> list[str]:
        """Greedy answers to ``(slot index, question ids)`` rows, each reading its slot after the prefix."""
        return generate_grouped(
            self.model,
            self.tokenizer,
            self.prefix,
            slots,
            questions,
            max_new_tokens,
            anchor=self.scaffold.anchor,
            progress=progress,
        )

    def question_ids(self, question: str, anchored: bool = True) -> torch.Tensor:
        """The ids after the context slot: the question part of the scaffold, then the anchor."""
        post = self.scaffold.post_ids(question)
        anchor = self.scaffold.anchor_ids
        return torch.cat([post, anchor]) if anchored and anchor.numel() else post
