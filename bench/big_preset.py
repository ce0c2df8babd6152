"""Write a large Gemma-shaped KerasHub preset with random bf16 weights, tensor by tensor.

The model is built with its variables unallocated, and Keras' own saving walk
names every variable; each one is written straight into ``model.weights.h5``
a block of rows at a time. A 7B-shaped preset is written without ever holding
a 7B model (peak memory stays near one block of rows).

    python bench/big_preset.py --shape gemma_2b --output /tmp/gemma_2b_shaped
    python bench/big_preset.py --shape gemma_7b --output /tmp/gemma_7b_shaped
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import keras_hub
import ml_dtypes
import numpy as np
from keras.src.saving import saving_lib

from hubquant.keras_internals import deferred_variables
from hubquant.synthetic import gemma_tokenizer

# The configurations of KerasHub's gemma_2b_en and gemma_7b_en presets.
SHAPES = {
    "gemma_2b": dict(
        vocabulary_size=256000,
        num_layers=18,
        num_query_heads=8,
        num_key_value_heads=1,
        hidden_dim=2048,
        intermediate_dim=32768,
        head_dim=256,
    ),
    "gemma_7b": dict(
        vocabulary_size=256000,
        num_layers=28,
        num_query_heads=16,
        num_key_value_heads=16,
        hidden_dim=3072,
        intermediate_dim=49152,
        head_dim=256,
    ),
    "gemma_2b_4layers": dict(  # gemma_2b with 4 blocks: quick memory checks
        vocabulary_size=256000,
        num_layers=4,
        num_query_heads=8,
        num_key_value_heads=1,
        hidden_dim=2048,
        intermediate_dim=32768,
        head_dim=256,
    ),
    "gemma_tiny": dict(  # a quick check of this script
        vocabulary_size=4096,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=1,
        hidden_dim=128,
        intermediate_dim=512,
        head_dim=32,
    ),
}
_BLOCK = 1 << 24  # values generated and written at a time


class RandomWeightsStore(saving_lib.H5IOStore):
    """A Keras weights store that writes seeded random bf16 values of each
    variable's shape instead of reading the variable."""

    def __init__(self, path: Path, seed: int):
        super().__init__(path, mode="w")
        self.rng = np.random.default_rng(seed)

    def __setitem__(self, key, variable):
        if not self._h5_entry_initialized:
            self._create_h5_group(self._h5_entry_path)
        shape = tuple(variable.shape)
        dataset = self._h5_entry_group.create_dataset(key, shape, dtype=np.dtype("V2"))
        dataset.attrs["dtype"] = "bfloat16"
        if len(shape) < 2:  # norm scales: Gemma computes (1 + scale)
            dataset[...] = np.zeros(shape, ml_dtypes.bfloat16).view("V2")
            return
        rows = max(1, _BLOCK // int(np.prod(shape[1:])))
        for start in range(0, shape[0], rows):
            stop = min(shape[0], start + rows)
            block = self.rng.standard_normal((stop - start, *shape[1:]), np.float32)
            dataset[start:stop] = (block * 0.02).astype(ml_dtypes.bfloat16).view("V2")


def write_preset(shape: str, output: Path, seed: int = 0) -> int:
    """Write the preset folder; return its parameter count."""
    output.mkdir(parents=True, exist_ok=False)
    with deferred_variables():
        backbone = keras_hub.models.GemmaBackbone(**SHAPES[shape], dtype="bfloat16")
    config = keras.saving.serialize_keras_object(backbone)
    for key in ("compile_config", "build_config"):
        config.pop(key, None)
    (output / "config.json").write_text(json.dumps(config, indent=2))
    metadata = {
        "keras_version": keras.__version__,
        "keras_hub_version": keras_hub.__version__,
        "parameter_count": backbone.count_params(),
    }
    (output / "metadata.json").write_text(json.dumps(metadata, indent=2))
    # A small real tokenizer: quantizing never reads the vocabulary.
    gemma_tokenizer().save_to_preset(str(output))
    store = RandomWeightsStore(output / "model.weights.h5", seed)
    try:
        saving_lib._save_state(
            backbone,
            weights_store=store,
            assets_store=None,
            inner_path="",
            visited_saveables=set(),
        )
    finally:
        store.close()
    return backbone.count_params()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gemma_2b")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    params = write_preset(args.shape, args.output, args.seed)
    size = (args.output / "model.weights.h5").stat().st_size
    print(
        f"wrote {args.output}: {args.shape}, {params / 1e9:.2f}B parameters, "
        f"{size / 2**30:.2f} GiB of weights, {time.perf_counter() - start:.0f}s"
    )


if __name__ == "__main__":
    main()
