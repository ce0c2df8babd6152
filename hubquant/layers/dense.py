"""hubquant's replacements for Keras ``Dense`` and ``EinsumDense``."""

from __future__ import annotations

import keras
from keras import ops

from hubquant.layers import products
from hubquant.layers.base import FloatMatrix, QuantizedLayerMixin
from hubquant.layers.layout import KernelLayout


class _QuantProjection(QuantizedLayerMixin):
    """Forward and hooks shared by both projection layers."""

    def _float_matrices(self):
        layout = self.layout
        rows = layout.output_axes[0] if len(layout.shape) == 2 else None
        return {"kernel": FloatMatrix("_kernel", layout.to_matrix, rows)}

    @property
    def kernel(self):
        """The float kernel (dequantized on the fly once quantized)."""
        if not getattr(self, "_is_quantized", False):
            return super().kernel
        w = self._dequantized("kernel", self.compute_dtype)
        return self.layout.from_matrix(w)

    def float_weights(self) -> list:
        """``weights`` as the float layer had them (kernel dequantized)."""
        return [self.kernel] + ([] if self.bias is None else [self.bias])

    def _quantized_forward(self, inputs, training=None):
        spec = self.hubquant_specs["kernel"]
        x = self._row_product("kernel", inputs, self.row_map(inputs))
        if x is not None:
            x = ops.cast(x, self.compute_dtype)
        elif spec.mode == "int8" and not spec.input_scale:
            codes = self.layout.from_matrix(ops.cast(self.kernel_codes, self.compute_dtype))
            x = self._project(inputs, codes)
            x = x * ops.cast(self.layout.output_scale(self.kernel_scale), x.dtype)
        else:
            x = self._project(inputs, self.kernel)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    _int8_call = _quantized_forward
    _int4_call = _quantized_forward

    def enable_lora(self, *args, **kwargs):
        if getattr(self, "_is_quantized", False):
            raise ValueError(f"Layer '{self.path}': LoRA on a hubquant layer is not supported.")
        return super().enable_lora(*args, **kwargs)


@keras.saving.register_keras_serializable(package="hubquant")
class QuantDense(_QuantProjection, keras.layers.Dense):
    """``Dense`` whose kernel can be held as int8 or packed int4."""

    @property
    def layout(self) -> KernelLayout:
        return KernelLayout.dense((self.hubquant_k, self.units))

    @property
    def hubquant_k(self) -> int:
        spec = self.hubquant_specs.get("kernel")
        return spec.k if spec and spec.k else self._kernel.shape[0]

    def _project(self, inputs, kernel):
        return ops.matmul(inputs, kernel)

    def row_map(self, inputs) -> products.RowMap:
        return products.dense_row_map(len(inputs.shape), self.units)


@keras.saving.register_keras_serializable(package="hubquant")
class QuantEinsumDense(_QuantProjection, keras.layers.EinsumDense):
    """``EinsumDense`` whose kernel can be held as int8 or packed int4."""

    @property
    def layout(self) -> KernelLayout:
        return KernelLayout.einsum(self.equation, self.hubquant_kernel_shape)

    @property
    def hubquant_kernel_shape(self) -> tuple:
        if hasattr(self, "_kernel"):
            return tuple(self._kernel.shape)
        return tuple(self._hubquant_kernel_shape)

    def quantized_build(self, shape, mode, config=None):
        if shape is not None:
            self._hubquant_kernel_shape = tuple(shape)
        super().quantized_build(shape, mode, config)

    def quantize(self, mode=None, type_check=True, config=None, **kwargs):
        self._hubquant_kernel_shape = tuple(self._kernel.shape)
        super().quantize(mode, type_check, config, **kwargs)

    def _project(self, inputs, kernel):
        return ops.einsum(self.equation, inputs, kernel)

    def row_map(self, inputs) -> products.RowMap | None:
        return products.einsum_row_map(self.equation, self.hubquant_kernel_shape)
