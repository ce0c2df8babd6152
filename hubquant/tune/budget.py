"""A size budget from the command line: a fraction of float, a size, or bits."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hubquant.errors import HubquantError

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMG]I?B|B)?", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """``kind``: "fraction" (of the planned matrices' float bytes), "bytes"
    (the whole model's weights) or "bits" (average per planned weight, scales
    and zero points included)."""

    kind: str
    value: float
    text: str

    def matrix_bytes(self, float_bytes: int, params: int, other_bytes: int) -> int:
        """Bytes the planned matrices may take; ``other_bytes``: what stays float
        outside them (norms, biases)."""
        if self.kind == "fraction":
            allowed = self.value * float_bytes
        elif self.kind == "bits":
            allowed = self.value * params / 8
        else:
            allowed = self.value - other_bytes
        if allowed > float_bytes:
            raise HubquantError(
                f"the budget {self.text} is above the float model "
                f"({float_bytes + other_bytes:,} bytes): nothing to tune."
            )
        return int(allowed)


def parse_budget(target_size: str | None, target_bits: str | None) -> Budget:
    """``--target-size`` (``0.25`` or ``1.5GB``) or ``--target-bits`` (``4.5``)."""
    if (target_size is None) == (target_bits is None):
        raise HubquantError(
            "give one budget: --target-size (a fraction like 0.25, or a size like 1.5GB) "
            "or --target-bits (average bits per weight)."
        )
    if target_bits is not None:
        bits = _number(target_bits, "--target-bits")
        if not 0 < bits <= 32:
            raise HubquantError(f"--target-bits must be in (0, 32]. Received: {target_bits}")
        return Budget("bits", bits, f"{target_bits} bits per weight")
    found = _SIZE.fullmatch(target_size.strip())
    if found is None:
        raise HubquantError(
            "--target-size must be a fraction of float (e.g. 0.25) or a size "
            f"(e.g. 1.5GB, 800MiB). Received: {target_size}"
        )
    number, unit = float(found.group(1)), (found.group(2) or "").upper()
    if not unit and number <= 1:
        if number <= 0:
            raise HubquantError(f"--target-size must be above 0. Received: {target_size}")
        return Budget("fraction", number, f"{target_size} of float")
    return Budget("bytes", number * _UNITS[unit], target_size)


def _number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise HubquantError(f"{option} must be a number. Received: {text}") from None
