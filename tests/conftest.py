"""Shared fixtures: tiny random-init checkpoints of every family, built and saved by the tests.

Each checkpoint folder holds ``config.json``, ``model.safetensors`` and a small byte-level BPE
tokenizer (trained here on a few sentences, with a ChatML chat template), so notebooks and
loaders run on them exactly as on a real checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SQUAD_SAMPLE = REPO_ROOT / "utils" / "data" / "squad-v1.1-dev-part-a.json"  # shipped (utils/data/README.md)

TINY_VOCAB = 512
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention is a bilinear form between queries and keys.",
    "Singular values describe how a matrix stretches space.",
    "Question: what is the capital of France? Answer: Paris.",
    "In 1905 Albert Einstein published four papers in Annalen der Physik.",
    "The river flows north through the valley for 120 kilometres.",
] * 20


def build_tiny_tokenizer(folder: Path):
    """A byte-level BPE tokenizer (< 512 tokens) with bos/eos/pad and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    assert len(fast) <= TINY_VOCAB
    return fast


def build_tiny_checkpoint(family: str, folder: Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random-init checkpoint of ``family`` ('llama', 'qwen2', 'gpt2', 'bert') to ``folder``."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if family == "llama":
        cfg = tf.LlamaConfig(
            **{
                **dict(
                    hidden_size=64,
                    intermediate_size=96,
                    num_hidden_layers=3,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    vocab_size=TINY_VOCAB,
                    max_position_embeddings=512,
                    bos_token_id=0,
                    eos_token_id=2,
                    pad_token_id=3,
                ),
                **overrides,
            }
        )
        model = tf.LlamaForCausalLM(cfg)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(
            **{
                **dict(
                    hidden_size=64,
                    intermediate_size=96,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=1,
                    vocab_size=TINY_VOCAB,
                    max_position_embeddings=512,
                    bos_token_id=0,
                    eos_token_id=2,
                    pad_token_id=3,
                ),
                **overrides,
            }
        )
        model = tf.Qwen2ForCausalLM(cfg)
    elif family == "gpt2":
        cfg = tf.GPT2Config(
            **{
                **dict(
                    n_embd=64,
                    n_layer=3,
                    n_head=4,
                    vocab_size=TINY_VOCAB,
                    n_positions=512,
                    bos_token_id=0,
                    eos_token_id=2,
                    pad_token_id=3,
                ),
                **overrides,
            }
        )
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "bert":
        cfg = tf.BertConfig(
            **{
                **dict(
                    hidden_size=64,
                    intermediate_size=96,
                    num_hidden_layers=3,
                    num_attention_heads=4,
                    vocab_size=TINY_VOCAB,
                    max_position_embeddings=512,
                    pad_token_id=3,
                ),
                **overrides,
            }
        )
        model = tf.BertModel(cfg)
    else:
        raise ValueError(family)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    build_tiny_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny_models")
    return {fam: build_tiny_checkpoint(fam, root / fam) for fam in ("llama", "gpt2", "bert")}


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="session")
def nan_llama_dir(tiny_model_dirs, tmp_path_factory) -> Path:
    """The tiny llama with one NaN in layer 0's W_Q: it opens (shapes, headers, layer count are sound) and
    every analysis of it fails inside the notebook, naming the non-finite entry."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("nan_model") / "llama"
    shutil.copytree(tiny_model_dirs["llama"], folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["gpt2"]


@pytest.fixture(scope="session")
def tiny_bert_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["bert"]


@pytest.fixture(scope="session")
def bundled_gguf():
    from utils.weights import ModelNotFound, bundled_gguf_path

    try:
        return bundled_gguf_path()
    except ModelNotFound as e:
        pytest.skip(str(e))


@pytest.fixture
def squad_sample() -> Path:
    """The SQuAD sample shipped in the repository (what ``data=auto`` reads)."""
    return SQUAD_SAMPLE


TINY_NOTEBOOK = REPO_ROOT / "tests" / "notebooks" / "99_tiny.py"  # a notebook that sleeps and writes files


def run_notebook_smoke(notebook_stem: str, params: dict, tmp_path: Path, run_name: str = "smoke") -> Path:
    """Execute ``notebooks/<stem>.py`` with ``params`` into ``tmp_path``; returns the run folder."""
    from utils.running.runner import execute

    return execute(notebook_stem, run_name=run_name, params=params, output_root=tmp_path, progress=False)
