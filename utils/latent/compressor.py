"""The trained context compressors of notebook 04, and their checkpoints.

All three read the frozen reader's cached hidden states ``H`` (T, L, d) of the context at the layers
``hidden_layers`` (0 = token embeddings; optionally from an *echo* pass) and work at any ratio r,
with M = ceil(T / r) slots over contiguous segments of the context:

* ``latent`` (:class:`LatentCompressor`): a small bidirectional transformer (the *trunk*) turns
  ``H`` into features ``f_t`` and a salience score ``s_t``; slot j pools its segment with weights
  ``softmax(s_t / tau)`` over ``E_t + rho * P f_t`` (``E`` the reader's token embeddings, ``P`` a
  zero-initialised projector, ``rho`` the embedding RMS) and is rescaled to the RMS of real token
  embeddings. At initialisation a sharp softmax makes slot j close to its most salient token; the
  LM losses then teach pooling and projection what the reader can use. Its *own selection as ids*
  is the argmax of each segment's pooling weights, fed back as tokens (the decisive ablation).
* ``pool_adapter`` (:class:`PoolAdapter`, a trained control): the segment means of ``E`` through an
  identity-initialised linear projector, RMS-matched; same LM steps as ``latent``.
* ``classifier`` (:class:`TokenClassifier`, LLMLingua-2 style): the same trunk trained only on the
  token labels; its top-M tokens are kept in context order (a hard-token method).
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn

from ..files import atomic_path, atomic_write_text
from .prompts import scale_to_rms
from .select import budget, segment_argmax, segment_bounds, top_m_in_order

KINDS = ("latent", "pool_adapter", "classifier")


class CheckpointError(ValueError):
    """A compressor checkpoint that cannot be used; the message says why and what to do."""


@dataclass
class TrainConfig:
    """How the compressors are built and trained; saved in every checkpoint (``config.json``). The field names
    are notebook 04's parameter names, so :class:`utils.latent.config.ExperimentConfig` fills it by name."""

    hidden_layers: str = "0,8"  # reader layers whose hidden states feed the trunk (comma list, 0 = embeddings)
    echo: bool = False  # read the states of a second copy of the context (each has seen it whole)
    d_enc: int = 192  # trunk width
    enc_layers: int = 1  # trunk transformer layers
    n_heads: int = 4  # trunk attention heads
    tau: float = 0.5  # pooling softmax temperature
    ratios: str = "4,10,6"  # compression ratios sampled per training batch (also the evaluated ratios)
    lr: float = 3e-4  # AdamW learning rate of the LM steps
    salience_lr: float = 2e-3  # learning rate of the label (salience / classifier) steps
    train_batch_size: int = 8  # the global batch: split over the processes of a distributed run
    salience_steps: int = 300  # label steps before any LM step (latent) / all steps (classifier)
    recall_steps: int = 100  # LM pretraining steps: recall a span of the context from the slots and a cue
    qa_steps: int = 200  # LM fine-tuning steps on training-side questions
    w_ce: float = 1.0  # answer cross-entropy
    w_kd: float = 1.0  # distillation from the reader reading the full context (cached top-k)
    kd_temperature: float = 1.0
    K: int = 4  # answer tokens distilled
    w_salience: float = 0.5  # label BCE kept as an auxiliary loss during LM steps (latent)
    w_amortise: float = 0.0  # regression of the slots onto per-context optimised vectors (amortisation run)
    grad_clip: float = 1.0
    anchored: bool = True  # prompts end with the scaffold's anchor
    seed: int = 0
    device: str = "cpu"
    amp: str = "auto"  # bfloat16 autocast: auto (on a GPU), bf16 (forced on any device, also the CPU), off

    RENAMED = {"n_layers": "enc_layers", "batch_size": "train_batch_size"}  # older checkpoints' field names

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {cls.RENAMED.get(k, k): v for k, v in d.items()}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def layers(self) -> list[int]:
        return [int(x) for x in str(self.hidden_layers).split(",") if x.strip()]

    @property
    def ratio_list(self) -> list[float]:
        return [float(x) for x in str(self.ratios).split(",") if x.strip()]

    @property
    def lm_steps(self) -> int:
        return self.recall_steps + self.qa_steps


def sinusoid(T: int, d: int) -> torch.Tensor:
    pos = torch.arange(T, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d // 2])
    return pe


class Trunk(nn.Module):
    """Cached hidden states (B, T, L, d) -> features (B, T, d_enc) and salience (B, T)."""

    def __init__(self, d_model: int, cfg: TrainConfig):
        super().__init__()
        n = len(cfg.layers)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n))
        self.inp = nn.Linear(n * d_model, cfg.d_enc)
        layer = nn.TransformerEncoderLayer(
            cfg.d_enc, cfg.n_heads, 2 * cfg.d_enc, dropout=0.0, batch_first=True, norm_first=True
        )
        self.body = nn.TransformerEncoder(layer, cfg.enc_layers, enable_nested_tensor=False)
        self.salience = nn.Linear(cfg.d_enc, 1)

    def forward(self, H: torch.Tensor, mask: torch.Tensor):
        x = torch.cat([nm(H[:, :, i].float()) for i, nm in enumerate(self.norms)], -1)
        x = self.inp(x) + sinusoid(H.shape[1], self.inp.out_features).to(x.device)
        f = self.body(x, src_key_padding_mask=~mask.bool())
        return f, self.salience(f).squeeze(-1)


class TokenClassifier(nn.Module):
    kind = "classifier"

    def __init__(self, d_model: int, cfg: TrainConfig, target_rms: float):
        super().__init__()
        self.cfg = cfg
        self.trunk = Trunk(d_model, cfg)
        self.register_buffer("target_rms", torch.tensor(float(target_rms)))

    def scores(self, H, mask):
        return self.trunk(H, mask)[1]

    @torch.no_grad()
    def select(self, H, mask, ratio: float) -> list[list[int]]:
        s = self.scores(H, mask)
        n = mask.sum(-1).tolist()
        return [top_m_in_order(s[b, : n[b]], budget(n[b], ratio)) for b in range(len(n))]


def segment_ids(n: int, M: int, device=None) -> torch.Tensor:
    seg = torch.empty(n, dtype=torch.long)
    for j, (a, b) in enumerate(segment_bounds(n, M)):
        seg[a:b] = j
    return seg.to(device)


def segment_softmax_pool(x: torch.Tensor, s: torch.Tensor, M: int) -> torch.Tensor:
    """Pool (n, d) rows into M segments with weights softmax(s) inside each segment -> (M, d), in float32
    (under bf16 autocast the scores come in bfloat16)."""
    x, s = x.float(), s.float()
    seg = segment_ids(x.shape[0], M, x.device)
    mx = torch.full((M,), float("-inf"), device=x.device).scatter_reduce(0, seg, s.detach(), "amax")
    w = torch.exp(s - mx[seg])
    den = torch.zeros(M, device=x.device).index_add(0, seg, w)
    return torch.zeros(M, x.shape[1], device=x.device, dtype=x.dtype).index_add(
        0, seg, (w / den[seg]).unsqueeze(-1) * x
    )


class LatentCompressor(nn.Module):
    kind = "latent"

    def __init__(self, d_model: int, cfg: TrainConfig, target_rms: float):
        super().__init__()
        self.cfg = cfg
        self.trunk = Trunk(d_model, cfg)
        self.proj = nn.Linear(cfg.d_enc, d_model)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.register_buffer("target_rms", torch.tensor(float(target_rms)))

    def forward(self, H, E, mask, ratio: float):
        """-> (list of (M_b, d) slot vectors, salience (B, T))."""
        f, s = self.trunk(H, mask)
        x = E.float() + float(self.target_rms) * self.proj(f)
        n = mask.sum(-1).tolist()
        out = []
        for b in range(len(n)):
            v = segment_softmax_pool(x[b, : n[b]], s[b, : n[b]] / self.cfg.tau, budget(n[b], ratio))
            out.append(scale_to_rms(v, float(self.target_rms)))
        return out, s

    @torch.no_grad()
    def select(self, H, mask, ratio: float) -> list[list[int]]:
        """Its own selection: the position with the largest pooling weight in each segment."""
        s = self.trunk(H, mask)[1]
        n = mask.sum(-1).tolist()
        return [segment_argmax(s[b, : n[b]], budget(n[b], ratio)) for b in range(len(n))]


class PoolAdapter(nn.Module):
    kind = "pool_adapter"

    def __init__(self, d_model: int, cfg: TrainConfig, target_rms: float):
        super().__init__()
        self.cfg = cfg
        self.adapter = nn.Linear(d_model, d_model)
        with torch.no_grad():
            self.adapter.weight.copy_(torch.eye(d_model))
            self.adapter.bias.zero_()
        self.register_buffer("target_rms", torch.tensor(float(target_rms)))

    def forward(self, H, E, mask, ratio: float):
        n = mask.sum(-1).tolist()
        out = []
        for b in range(len(n)):
            M = budget(n[b], ratio)
            seg = segment_ids(n[b], M, E.device)
            cnt = torch.zeros(M, device=E.device).index_add(0, seg, torch.ones(n[b], device=E.device))
            mean = torch.zeros(M, E.shape[-1], device=E.device).index_add(0, seg, E[b, : n[b]].float()) / cnt.unsqueeze(
                -1
            )
            out.append(scale_to_rms(self.adapter(mean), float(self.target_rms)))
        return out, None


def build(kind: str, d_model: int, cfg: TrainConfig, target_rms: float) -> nn.Module:
    if kind not in KINDS:
        raise ValueError(f"unknown compressor kind {kind!r}; choose from {KINDS}")
    return {"latent": LatentCompressor, "pool_adapter": PoolAdapter, "classifier": TokenClassifier}[kind](
        d_model, cfg, target_rms
    )


# ----------------------------------------------------------------------------- checkpoints
def save_bundle(
    path: str | Path, modules: dict, meta: dict, optimizers: dict | None = None, half: bool = False
) -> Path:
    """``<path>/config.json`` (``meta``: config, d_model, target_rms, data the modules saw, progress) and one
    ``<kind>.pt`` per module (weights, optimiser); every file written atomically. ``half`` stores float16."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for kind, m in modules.items():
        sd = {k: (v.half() if half and v.is_floating_point() else v) for k, v in m.state_dict().items()}
        state = {"model": sd, "optimizer": (optimizers or {}).get(kind)}
        with atomic_path(path / f"{kind}.pt") as tmp:
            torch.save(state, tmp)
    atomic_write_text(path / "config.json", json.dumps(meta, indent=2) + "\n")
    return path


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} is not a compressor checkpoint: it has no config.json (expected a folder "
            "written by notebook 04, with config.json and latent.pt / pool_adapter.pt / classifier.pt)"
        )
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{path / 'config.json'} is not valid JSON ({e}): the checkpoint is damaged; "
            "delete the folder and train again (checkpoint='' / resume=false)"
        ) from None


def load_state(file: Path, device: str = "cpu") -> dict:
    """``torch.load`` of one module file, with a message saying what is wrong and how to fix it."""
    if not file.is_file():
        raise CheckpointError(
            f"{file} is missing: the checkpoint folder is incomplete; delete it and train again "
            "(resume=false), or point `checkpoint` to a complete folder"
        )
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{file} is truncated or corrupt ({file.stat().st_size} bytes; torch says: {first}). It was probably "
            "cut off by an interrupted write or copy: delete it (or its folder) and rerun with resume=false to "
            "train again, or restore a complete copy"
        ) from None


def config_differences(saved: dict, current: dict, ignore=("device", "amp")) -> dict:
    """Fields whose value differs between a saved and the current config: ``{field: (saved, current)}``."""
    keys = (set(saved) | set(current)) - set(ignore)
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}


def check_resumable(meta: dict, cfg: TrainConfig, d_model: int) -> None:
    """Refuse a resume whose checkpoint was trained with another configuration (naming the fields)."""
    saved = asdict(TrainConfig.from_dict(meta.get("config", {})))
    diff = config_differences({**saved, "d_model": meta.get("d_model")}, {**asdict(cfg), "d_model": d_model})
    if diff:
        what = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"cannot resume: the checkpoint was trained with a different configuration ({what}). Rerun with the "
            "checkpoint's values, or start afresh with resume=false (or another run_name)"
        )


def load_bundle(path: str | Path, kinds=KINDS, device: str = "cpu") -> tuple[dict, dict, dict]:
    """Rebuild the modules of a bundle: ``(modules, optimizer states, meta)``; modules in eval mode, float32."""
    path = Path(path)
    meta = read_meta(path)
    cfg = TrainConfig.from_dict(meta["config"])
    mods, opts = {}, {}
    for kind in kinds:
        if not (path / f"{kind}.pt").is_file() and kind != "latent":
            continue
        state = load_state(path / f"{kind}.pt", device)
        m = build(kind, meta["d_model"], cfg, meta["target_rms"]).to(device)
        try:
            m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
        except RuntimeError as e:
            raise CheckpointError(
                f"{path / f'{kind}.pt'} does not fit its config.json ({str(e).splitlines()[0]}); "
                "the folder mixes files of different runs: train again"
            ) from None
        mods[kind] = m.eval()
        opts[kind] = state.get("optimizer")
    return mods, opts, meta


def export_bundle(src: str | Path, dst: str | Path) -> Path:
    """A trained bundle for shipping: float16 weights, no optimiser state, the same ``config.json``.

    ``python -c "from utils.latent.compressor import export_bundle; export_bundle('output/…/ckpt_seed0',
    'models/latent-smollm2')"``
    """
    mods, _, meta = load_bundle(src)
    return save_bundle(dst, mods, meta, half=True)
