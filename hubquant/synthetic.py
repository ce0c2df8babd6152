"""Small synthetic presets: the built-in offline default and the test fixtures.

They have real KerasHub architectures and tokenizers, and weights shaped like
trained ones (per-channel scales spread over an order of magnitude, a few
outlier input channels), but they are random: they show the pipeline, not a
model worth talking to.
"""

from __future__ import annotations

import atexit
import functools
import io
import shutil
import tempfile
from pathlib import Path

import keras
import keras_hub
import numpy as np

DEFAULT_PRESET = "synthetic-gemma"

_CORPUS = (
    "Keras is a deep learning library for Python. It runs on JAX, TensorFlow "
    "and PyTorch. KerasHub holds pretrained models such as Gemma and Llama, "
    "ready to generate text. Quantization stores each weight with fewer bits, "
    "so a model takes less memory and loads faster. A group of weights shares "
    "one scale, and an integer code per weight says where it falls between the "
    "smallest and the largest value of its group. The quick brown fox jumps "
    "over the lazy dog while the small model answers questions about the "
    "weather, the sea, numbers from one to ten and the names of the months. "
)


def gemma_tokenizer(vocab_size: int = 384) -> keras_hub.models.GemmaTokenizer:
    """A SentencePiece tokenizer trained on a built-in paragraph."""
    return keras_hub.models.GemmaTokenizer(proto=sentencepiece_proto(vocab_size))


def sentencepiece_proto(vocab_size: int = 384, symbols: tuple[str, ...] = ()) -> bytes:
    """A SentencePiece model (Gemma's special ids) trained on a built-in
    paragraph; ``symbols`` are extra pieces kept whole (Gemma 3's image and
    turn tokens)."""
    import sentencepiece as spm

    extra = {"user_defined_symbols": list(symbols)} if symbols else {}
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS.split(". ") * 4),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
        **extra,
    )
    return model.getvalue()


LLAMA3_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s"]


def llama3_tokenizer() -> keras_hub.models.Llama3Tokenizer:
    """A byte-level BPE tokenizer: the 256 byte symbols and a few merges."""
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    merges = list(LLAMA3_MERGES)
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    for token in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"):
        vocab[token] = len(vocab)
    for token in ("<|start_header_id|>", "<|end_header_id|>"):
        vocab[token] = len(vocab)
    return keras_hub.models.Llama3Tokenizer(vocabulary=vocab, merges=merges)


def gemma_causal_lm(seed: int = 0, **dims) -> keras_hub.models.GemmaCausalLM:
    """A tiny GemmaCausalLM with trained-like weights and a real tokenizer."""
    tokenizer = gemma_tokenizer()
    config = dict(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=1,
        hidden_dim=96,
        intermediate_dim=320,
        head_dim=24,
    )
    config.update(dims)
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GemmaBackbone(**config)
    return _task(keras_hub.models.GemmaCausalLM, backbone, tokenizer, seed)


def llama3_causal_lm(seed: int = 0, tokenizer=None, **dims) -> keras_hub.models.Llama3CausalLM:
    """A tiny Llama3CausalLM (untied LM head unless told otherwise)."""
    tokenizer = tokenizer or llama3_tokenizer()
    config = dict(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=80,
        intermediate_dim=200,
        tie_word_embeddings=False,
    )
    config.update(dims)
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.Llama3Backbone(**config)
    return _task(keras_hub.models.Llama3CausalLM, backbone, tokenizer, seed)


def default_causal_lm() -> keras_hub.models.GemmaCausalLM:
    """The built-in offline default: a small synthetic Gemma."""
    return gemma_causal_lm(
        seed=2026, num_layers=4, hidden_dim=256, intermediate_dim=1024, head_dim=64
    )


def default_preset() -> str:
    """The built-in default as a KerasHub preset folder, written once per process
    (removed at exit), so ``apply`` streams it like any other preset."""
    folder = _default_folder()
    if not (Path(folder) / "config.json").is_file():  # new, or removed meanwhile
        default_causal_lm().save_to_preset(folder)
    return folder


@functools.cache
def _default_folder() -> str:
    folder = tempfile.mkdtemp(prefix="hubquant-default-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def make_trained_like(model: keras.Model, seed: int, std: float = 0.02) -> None:
    """Give every matrix trained-like structure at a trained-like scale.

    Output channels (last axis) get scales spread over an order of magnitude,
    input rows (first axis) a log-normal spread with a few 6x outliers; each
    matrix is then scaled to standard deviation ``std`` (0.02, as in many
    trained LLMs), so the residual stream stays well-conditioned.
    """
    rng = np.random.default_rng(seed)
    for var in model.weights:
        if len(var.shape) < 2:
            continue
        shape = tuple(var.shape)
        w = rng.standard_normal(shape).astype(np.float32)
        w *= np.exp(rng.uniform(-1.15, 1.15, shape[-1]))
        rows = np.exp(rng.normal(0.0, 0.3, shape[0]))
        rows[rng.choice(shape[0], max(1, shape[0] // 32), replace=False)] *= 6.0
        w *= rows.reshape((shape[0],) + (1,) * (len(shape) - 1))
        w *= std / w.std()
        var.assign(w.astype(var.dtype))


def add_activation_outliers(backbone, seed: int, factor: float = 10.0) -> list[int]:
    """Give the residual stream trained-like activations: hidden channels
    correlated (the token table mixed by a random matrix) and a few of them
    ``factor`` times larger than the rest, as in trained LLMs. Every block's
    projections then see both. Returns the outlier channels."""
    table = backbone.token_embedding.embeddings
    hidden = table.shape[1]
    rng = np.random.default_rng(seed)
    channels = sorted(rng.choice(hidden, max(1, hidden // 32), replace=False).tolist())
    w = np.array(keras.ops.convert_to_numpy(table), np.float32)
    mix = 0.5 * np.eye(hidden) + rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)
    w = (w @ mix) * (np.std(w) / np.std(w @ mix))
    w[:, channels] *= factor
    table.assign(w.astype(table.dtype))
    return channels


def _task(task_cls, backbone, tokenizer, seed):
    preprocessor = task_cls.preprocessor_cls(tokenizer, sequence_length=32)
    lm = task_cls(backbone=backbone, preprocessor=preprocessor)
    make_trained_like(backbone, seed)
    return lm


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]
