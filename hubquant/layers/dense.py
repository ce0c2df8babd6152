"""hubquant's replacements for Keras ``Dense`` and ``EinsumDense``."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from hubquant import quantizers
from hubquant.keras_internals import unlocked
from hubquant.layers import lora, products
from hubquant.layers.base import FloatMatrix, QuantizedLayerMixin
from hubquant.layers.layout import KernelLayout


class _QuantProjection(QuantizedLayerMixin):
    """Forward and hooks shared by both projection layers."""

    def _float_matrices(self):
        layout = self.layout
        rows = layout.output_axes[0] if len(layout.shape) == 2 else None
        return {"kernel": FloatMatrix("_kernel", layout.to_matrix, rows, layout.to_columns)}

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
        if self.lora_enabled:
            x = ops.add(x, self._lora_output(inputs))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    _int8_call = _quantized_forward
    _int4_call = _quantized_forward

    # -- LoRA -----------------------------------------------------------------
    def enable_lora(self, rank, lora_alpha=None, a_initializer="he_uniform", b_initializer="zeros"):
        """Keras' LoRA on the quantized kernel: ``A [.., rank]`` and ``B [rank, out]``
        (float32, the only trainable weights); the codes stay frozen and are
        never dequantized into a stored float copy."""
        if not getattr(self, "_is_quantized", False):
            return super().enable_lora(rank, lora_alpha, a_initializer, b_initializer)
        lora.check_rank(self, rank)
        shape = self.layout.shape
        with unlocked(self):
            self.lora_kernel_a = lora.add_factor(self, "a", (*shape[:-1], rank), a_initializer)
            self.lora_kernel_b = lora.add_factor(self, "b", (rank, shape[-1]), b_initializer)
        if self.bias is not None:
            self.bias.trainable = False
        self.lora_enabled = True
        self.lora_rank = rank
        self.lora_alpha = rank if lora_alpha is None else lora_alpha

    def float_axes(self, name: str):
        """The float variable behind matrix ``name``: its name, shape, and the
        kernel axes flattened into ``N`` and into ``K`` (``sharding.py``)."""
        layout = self.layout
        return "kernel", layout.shape, layout.output_axes, layout.reduce_axes

    def lora_delta(self):
        """The adapter's kernel ``A B * alpha / rank`` in Keras' kernel layout (float32)."""
        delta = ops.matmul(self.lora_kernel_a, self.lora_kernel_b)
        return delta * (self.lora_alpha / self.lora_rank)

    def _lora_output(self, inputs):
        delta = ops.cast(self.lora_delta(), self.compute_dtype)
        return self._project(inputs, delta)

    def merge_adapter(self, hessian=None) -> None:
        """Fold the adapter into the codes on the layer's own grid: its scales and
        zero points (GPTQ's, AWQ's input scale) are kept and each code moves to the
        level nearest ``W + A B * alpha / rank``, so codes whose weight moved by
        less than half a step stay as calibration left them; only a row or group
        the adapter pushed out of its range gets a new scale. Given ``hessian``
        (``X^T X`` of the layer's inputs, ``[K, K]``), the codes are chosen on
        that grid by GPTQ's sweep instead (``gptq_on_grid``)."""
        spec = self.hubquant_specs["kernel"]
        parts = [np.asarray(p) for p in self._matrix_parts("kernel")]
        delta = self.adapter_matrix()
        if spec.input_scale:  # the grid is that of W / input_scale
            delta = delta / parts[-1][None, :]
        w = np.asarray(self._dequantized_f32(spec, parts)) + delta
        kept = quantizers.QuantizedMatrix(parts[0], parts[1], parts[2] if spec.has_zero else None)
        merged = quantizers.requantize_on_grid(w, spec.mode, spec.group_size, kept)
        if hessian is not None:
            from hubquant.calibrate.gptq import gptq_on_grid

            if spec.input_scale:  # the inputs of W / input_scale are x * input_scale
                hessian = hessian * np.outer(parts[-1], parts[-1])
            merged = gptq_on_grid(w, hessian, merged, spec.mode, spec.group_size)
        self.merge_codes(merged)

    def adapter_matrix(self) -> np.ndarray:
        """The adapter's kernel as an ``[N, K]`` float32 matrix (``lora_delta``)."""
        return self.layout.to_matrix(np.asarray(self.lora_delta(), np.float32))

    def merge_codes(self, matrix: quantizers.QuantizedMatrix, input_scale=None) -> None:
        """Hold ``matrix`` (same mode and group size; with an input scale held,
        ``input_scale`` too) in place of the codes, and drop the adapter."""
        self.kernel_codes.assign(matrix.codes)
        self.kernel_scale.assign(matrix.scale)
        if matrix.zero is not None:
            self.kernel_zero.assign(matrix.zero)
        if input_scale is not None:
            self.kernel_input_scale.assign(input_scale)
        self._drop_adapter()

    def _drop_adapter(self) -> None:
        with unlocked(self):
            self._drop_variable("lora_kernel_a")
            self._drop_variable("lora_kernel_b")
        self.lora_enabled = False
        self.lora_rank = None


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

    def _lora_output(self, inputs):
        a, b = (ops.cast(v, self.compute_dtype) for v in (self.lora_kernel_a, self.lora_kernel_b))
        return ops.matmul(ops.matmul(inputs, a), b) * (self.lora_alpha / self.lora_rank)

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
