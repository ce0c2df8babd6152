"""What ``tune`` may choose for each layer, and what each choice costs in bytes."""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass

from hubquant.errors import HubquantError
from hubquant.plan import PlanEntry


@dataclass(frozen=True)
class Candidate:
    """One way to store a matrix: a mode and (int4) its groups. An int4
    candidate rounds each layer as the shipped ``int4`` config would (its
    clipping range searched or not by role: ``for_entry``)."""

    mode: str  # "none", "int8" or "int4"
    group_size: int = -1
    symmetric: bool = True
    clip: bool = True  # int4: search each group's clipping range

    @property
    def name(self) -> str:
        if self.mode != "int4":
            return self.mode
        return f"int4_g{self.group_size}" + ("_sym" if self.symmetric else "")

    def options(self) -> dict:
        """The config options that select this candidate."""
        if self.mode == "none":
            return {"mode": "none"}
        options = {"mode": self.mode, "group_size": self.group_size, "symmetric": self.symmetric}
        return {**options, "clip": self.clip} if self.mode == "int4" else options

    def for_entry(self, entry: PlanEntry) -> Candidate:
        """This candidate as ``entry`` takes it: int4 with the shipped config's clip."""
        if self.mode != "int4":
            return self
        return dataclasses.replace(self, clip=shipped_clip(entry))

    def applied_to(self, entry: PlanEntry) -> PlanEntry:
        """``entry`` as the Plan would hold it stored this way."""
        return dataclasses.replace(
            entry,
            mode=self.mode,
            group_size=self.group_size,
            symmetric=self.symmetric,
            clip=self.clip or self.mode != "int4",
        )

    def size(self, entry: PlanEntry) -> int:
        """Bytes of ``entry`` stored this way, as the Plan counts them."""
        return self.applied_to(entry).bytes_after


def shipped_clip(entry: PlanEntry) -> bool:
    """Whether the shipped ``int4`` config searches ``entry``'s clipping range
    (its rules say by role: chosen on real models, bench/fidelity.py)."""
    # Its rules name roles, not blocks, so the model's block count does not matter.
    options, _ = _shipped_int4().resolve(entry.role, entry.block, 1 << 30, entry.path)
    return options.clip


@functools.cache
def _shipped_int4():
    from hubquant.config import load_config, shipped_configs

    return load_config(shipped_configs()["int4"])


_INT4 = re.compile(r"int4_g([1-9][0-9]{0,5})(_sym)?")
DEFAULT_NAMES = (
    "none",
    "int8",
    "int4_g32",
    "int4_g64",
    "int4_g128",
    "int4_g32_sym",
    "int4_g64_sym",
    "int4_g128_sym",
)


def candidate(name: str) -> Candidate:
    """A candidate from its name: ``none``, ``int8``, ``int4_g<size>[_sym]``."""
    if name in ("none", "int8"):
        return Candidate(name)
    found = _INT4.fullmatch(name)
    if found is None:
        raise HubquantError(
            f"--candidates: unknown candidate '{name}'; expected none, int8 or "
            "int4_g<group size>[_sym] (e.g. int4_g64, int4_g128_sym)."
        )
    return Candidate("int4", int(found.group(1)), found.group(2) is not None)


def parse_candidates(text: str | None) -> tuple[Candidate, ...]:
    """A comma list of names; ``+name`` adds to the defaults, ``-name`` drops one."""
    names = list(DEFAULT_NAMES)
    if text:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not all(t[0] in "+-" for t in items):
            names = []
        for item in items:
            bare = item.lstrip("+-")
            candidate(bare)  # checked
            if item.startswith("-"):
                names = [n for n in names if n != bare]
            elif bare not in names:
                names.append(bare)
    if not names:
        raise HubquantError(f"--candidates leaves nothing to choose from. Received: {text!r}")
    return tuple(candidate(n) for n in names)
