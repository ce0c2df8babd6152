"""What ``tune`` may choose for each layer, and what each choice costs in bytes."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from hubquant.errors import HubquantError
from hubquant.plan import PlanEntry


@dataclass(frozen=True)
class Candidate:
    """One way to store a matrix: a mode and (int4) its groups."""

    mode: str  # "none", "int8" or "int4"
    group_size: int = -1
    symmetric: bool = True

    @property
    def name(self) -> str:
        if self.mode != "int4":
            return self.mode
        return f"int4_g{self.group_size}" + ("_sym" if self.symmetric else "")

    def options(self) -> dict:
        """The config options that select this candidate."""
        if self.mode == "none":
            return {"mode": "none"}
        return {"mode": self.mode, "group_size": self.group_size, "symmetric": self.symmetric}

    def applied_to(self, entry: PlanEntry) -> PlanEntry:
        """``entry`` as the Plan would hold it stored this way."""
        return dataclasses.replace(
            entry, mode=self.mode, group_size=self.group_size, symmetric=self.symmetric
        )

    def size(self, entry: PlanEntry) -> int:
        """Bytes of ``entry`` stored this way, as the Plan counts them."""
        return self.applied_to(entry).bytes_after


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
