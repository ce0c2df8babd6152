"""Mixture-of-experts weight banks (Mixtral, QwenMoe, Qwen3Moe, ...).

KerasHub holds experts as raw ``add_weight`` tensors ``[experts, in, out]`` in
a family-specific layer whose ``call`` reads them by attribute. hubquant gives
that layer a subclass in which each quantized bank is stored per expert and
per output channel (canonical ``[experts * out, in]``, groups along ``in``)
and the attribute becomes a property that rebuilds the bank from the
quantized storage, so the family's own routed forward runs unchanged.
"""

from __future__ import annotations

import functools

import numpy as np
from keras import ops

from hubquant.layers.base import FloatMatrix, QuantizedLayerMixin
from hubquant.layers.sharding import to_host


@functools.cache
def experts_class(source: type) -> type:
    """The hubquant subclass for an experts layer class."""
    return type(
        f"Quant{source.__name__}",
        (QuantExpertsMixin, source),
        {"__module__": __name__, "_int8_call": source.call, "_int4_call": source.call},
    )


class QuantExpertsMixin(QuantizedLayerMixin):
    """Banks named in ``hubquant_specs`` read as properties once quantized."""

    hubquant_bank_shapes: dict  # bank name -> (experts, in, out), set with the specs

    def __getattr__(self, name):
        # Only reached when normal lookup fails: a quantized bank's float
        # variable is gone, so its name resolves to the rebuilt bank.
        specs = self.__dict__.get("hubquant_specs", {})
        if name in specs and self.__dict__.get("_is_quantized", False):
            return self._bank(name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def _bank(self, name: str):
        experts, k, n = self.hubquant_bank_shapes[name]
        w = self._dequantized(name, self.compute_dtype)  # [experts * out, in]
        return ops.transpose(ops.reshape(w, (experts, n, k)), (0, 2, 1))

    def _float_matrices(self):
        return {name: FloatMatrix(name, _canonical) for name in self.hubquant_specs}

    def float_axes(self, name: str):
        """The float bank behind ``name`` (``sharding.py``): ``[experts, in, out]``,
        experts then out flattened into ``N`` (a mesh axis on the experts
        splits whole experts); KerasHub names the variable after the attribute."""
        held = self.__dict__.get(name)
        var_name = held.name if held is not None else name.lstrip("_")
        return var_name, tuple(self.hubquant_bank_shapes[name]), (0, 2), (1,)

    def float_weights(self) -> list:
        return [self._bank(name) for name in self.hubquant_specs]


def _canonical(value) -> np.ndarray:
    """``[experts, in, out]`` float weights as ``[experts * out, in]`` float32."""
    w = to_host(value)
    experts, k, n = w.shape
    return np.ascontiguousarray(np.transpose(w, (0, 2, 1)), dtype=np.float32).reshape(
        experts * n, k
    )
