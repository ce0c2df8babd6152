"""One of two processes quantizing a model sharded across both (run by
tests/test_sharding.py):

    python multiprocess_quantize.py ID PORT PRESET CONFIG TOKENS.npy OUTPUT

Each process holds 2 of the 4 CPU devices of a (2, 2) mesh. Calibration
windows are split along the mesh's batch axis, so X^T X sums over both
processes; JAX's CPU collectives (gloo) gather what ``hubquant.save`` writes,
and the first process writes it.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(process_id: int, port: str, preset: str, config: str, tokens: str, output: str) -> None:
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    import keras
    import keras_hub
    import numpy as np

    import hubquant
    from hubquant.config import load_config

    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((2, 2), ("batch", "model"), devices)
    layout_map = keras_hub.models.GemmaBackbone.get_layout_map(mesh)
    distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    keras.utils.set_random_seed(0)  # every process initializes the same values
    with distribution.scope():
        lm = keras_hub.models.CausalLM.from_preset(preset)
        plan = hubquant.plan_for(lm, load_config(config))
        hubquant.apply_plan(lm, plan, calibration=np.load(tokens))
        held = {w.path: w.value.sharding.shard_shape(w.shape) for w in lm.weights}
        assert held["decoder_block_0/attention/query/kernel_codes"] == (32, 16), held  # a quarter
        hubquant.save(lm, output, formats=("preset", "safetensors"))


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:])
