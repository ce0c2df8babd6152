"""How a projection kernel maps to hubquant's canonical ``[N, K]`` matrix.

A kernel axis is a *reduction* axis when its einsum letter is absent from the
output, otherwise an *output* axis. The canonical matrix puts the output axes
(flattened in kernel order) first and the reduction axes (flattened in kernel
order, which is Hugging Face's input order for KerasHub kernels) second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from keras import ops

from hubquant.layers.sharding import host_view
from hubquant.quantizers import Columns


@dataclass(frozen=True)
class KernelLayout:
    shape: tuple[int, ...]
    reduce_axes: tuple[int, ...]
    output_axes: tuple[int, ...]
    # Where each output axis lands in the layer output, to de-scale there.
    scale_shape: tuple[int, ...] = ()
    scale_perm: tuple[int, ...] = ()

    @classmethod
    def dense(cls, shape) -> KernelLayout:
        return cls(tuple(shape), (0,), (1,), (shape[1],), (0,))

    @classmethod
    def einsum(cls, equation: str, shape) -> KernelLayout:
        inputs, output = equation.split("->")
        _, kernel = inputs.split(",")
        shared = [c for c in kernel if c in output and c in inputs.split(",")[0]]
        if shared or "." in equation:
            raise NotImplementedError(
                f"Cannot quantize einsum '{equation}': kernel axes {shared} are "
                "batch axes, not reduction or output axes."
            )
        reduce_axes = tuple(i for i, c in enumerate(kernel) if c not in output)
        output_axes = tuple(i for i, c in enumerate(kernel) if c in output)
        out_letters = [kernel[i] for i in output_axes]
        order = sorted(range(len(out_letters)), key=lambda j: output.index(out_letters[j]))
        scale_shape = tuple(shape[kernel.index(c)] if c in out_letters else 1 for c in output)
        return cls(tuple(shape), reduce_axes, output_axes, scale_shape, tuple(order))

    @property
    def n(self) -> int:
        return math.prod(self.shape[i] for i in self.output_axes)

    @property
    def k(self) -> int:
        return math.prod(self.shape[i] for i in self.reduce_axes)

    def to_matrix(self, kernel) -> np.ndarray:
        """Float32 ``[N, K]`` from a kernel in Keras layout."""
        perm = self.output_axes + self.reduce_axes
        kernel = np.transpose(host_view(kernel), perm)
        return np.ascontiguousarray(kernel, dtype=np.float32).reshape(self.n, self.k)

    def to_columns(self, kernel) -> Columns:
        """The ``[N, K]`` matrix as ``Columns`` over the kernel laid out
        ``[K, N]`` in its stored dtype: a reshape, no copy, where every
        reduction axis is stored before every output axis (a Dense kernel),
        else one copy in that dtype (Gemma's ``[heads, hidden, head_dim]``)."""
        kernel = kernel if isinstance(kernel, np.ndarray) else host_view(kernel)  # no copy
        kernel = np.transpose(kernel, self.reduce_axes + self.output_axes)
        return Columns.of(np.reshape(kernel, (self.k, self.n)))

    def from_matrix(self, matrix):
        """Kernel in Keras layout from an ``[N, K]`` tensor (backend ops)."""
        perm = self.output_axes + self.reduce_axes
        permuted = ops.reshape(matrix, [self.shape[i] for i in perm])
        return ops.transpose(permuted, np.argsort(perm).tolist())

    def output_scale(self, scale):
        """Per-output-channel scale ``[N]`` shaped to broadcast onto the output."""
        dims = [self.shape[i] for i in self.output_axes]
        scale = ops.transpose(ops.reshape(scale, dims), list(self.scale_perm))
        return ops.reshape(scale, self.scale_shape)
