"""Run under a given KERAS_BACKEND by tests/test_backends.py (a fresh process).

Quantizes a tiny Gemma, saves every format into OUT, reloads each one and
checks outputs bitwise, generates, and leaves the logits in OUT.npy.
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


def main(out: str) -> None:
    lm = synthetic.gemma_causal_lm(seed=0)
    hubquant.quantize(lm, "int4")
    expected = keras.ops.convert_to_numpy(lm(INPUTS))
    hubquant.save(lm, out, formats=("preset", "keras", "safetensors"))
    for path in (out, f"{out}/model.keras", f"{out}/model.safetensors"):
        got = keras.ops.convert_to_numpy(hubquant.load(path)(INPUTS))
        assert np.array_equal(got, expected), f"{keras.config.backend()}: {path} differs"
    assert lm.generate("the sea", max_length=8).startswith("the sea")
    np.save(f"{out}.npy", expected)
    print(f"ok {keras.config.backend()}")


if __name__ == "__main__":
    main(sys.argv[1])
