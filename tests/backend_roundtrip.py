"""Run under a given KERAS_BACKEND by tests/test_backends.py (a fresh process).

``backend_roundtrip.py OUT [JAX_DIR]``: quantizes a tiny Gemma, saves every
format into OUT, reloads each one and checks outputs bitwise, generates, and
leaves the logits in OUT.npy. With JAX_DIR (artefacts written under JAX), it
also loads each of those and leaves their logits in OUT.from_jax.npy.
"""

import sys

import keras
import numpy as np

import hubquant
from hubquant import synthetic

INPUTS = {
    "token_ids": np.array([[5, 9, 17, 33, 2, 7, 11, 3]], "int32"),
    "padding_mask": np.ones((1, 8), "int32"),
}


def artefacts(folder) -> list[str]:
    """The preset folder, the .keras archive and the safetensors file in ``folder``."""
    return [str(folder), f"{folder}/model.keras", f"{folder}/model.safetensors"]


def logits_of(path) -> np.ndarray:
    return keras.ops.convert_to_numpy(hubquant.load(path)(INPUTS))


def main(out: str, jax_dir: str | None = None) -> None:
    lm = synthetic.gemma_causal_lm(seed=0)
    hubquant.quantize(lm, "int4")
    expected = keras.ops.convert_to_numpy(lm(INPUTS))
    hubquant.save(lm, out, formats=("preset", "keras", "safetensors"))
    for path in artefacts(out):
        got = logits_of(path)
        assert np.array_equal(got, expected), f"{keras.config.backend()}: {path} differs"
    assert lm.generate("the sea", max_length=8).startswith("the sea")
    np.save(f"{out}.npy", expected)
    if jax_dir:
        np.save(f"{out}.from_jax.npy", np.stack([logits_of(p) for p in artefacts(jax_dir)]))
    print(f"ok {keras.config.backend()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
