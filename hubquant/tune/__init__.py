"""``hubquant tune``: mixed precision chosen to a size budget.

Each planned matrix may take any candidate (``none``, ``int8``, ``int4`` in
several group sizes); the damage of each choice is estimated from the Fisher
diagonal on calibration text (fisher.py, damage.py) of what the model is used
for (objective.py: an LM's next-token distribution, an encoder's embedding),
and the least total damage that fits the budget is chosen (allocate.py). The result is an ordinary config
(writer.py) that ``hubquant apply`` uses like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hubquant.paths import backbone_of
from hubquant.plan import Plan, PlanEntry, itemsize
from hubquant.tune.budget import Budget
from hubquant.tune.candidates import Candidate

# Every matrix the recipe names, routers excepted (they stay float).
_ALL_MATRICES = (
    "default: {mode: int8}\n"
    "rules:\n"
    "  - match: {role: 'moe.*router'}\n    mode: none\n    optional: true\n"
)


@dataclass
class Tuned:
    """What ``tune`` chose and why."""

    entries: list[PlanEntry]
    candidates: tuple[Candidate, ...]
    damage: np.ndarray  # [layers, candidates]: the objective's estimate each adds
    sizes: np.ndarray  # [layers, candidates]: bytes
    chosen: np.ndarray  # [layers]: candidate index
    budget_bytes: int  # for the planned matrices
    float_bytes: int  # the planned matrices in float
    objective: object  # objective.NextToken or Embedding

    @property
    def predicted(self) -> float:
        """Estimated KL per token (an LM) or 1 - cosine per window (an encoder)."""
        return float(self.damage[np.arange(len(self.chosen)), self.chosen].sum())

    @property
    def chosen_bytes(self) -> int:
        return int(self.sizes[np.arange(len(self.chosen)), self.chosen].sum())

    def choices(self) -> list[Candidate]:
        """Each entry's candidate, as it takes it (int4: with its clip rule)."""
        return [
            self.candidates[i].for_entry(e) for e, i in zip(self.entries, self.chosen, strict=True)
        ]

    def rows(self) -> list[dict]:
        """Per layer: ``inspect``'s row of the chosen layer, and its damage."""
        from hubquant.inspection import layer_row

        chosen = zip(self.entries, self.chosen, self.choices(), strict=True)
        return [
            {**layer_row(choice.applied_to(e)), "damage": float(self.damage[i, c])}
            for i, (e, c, choice) in enumerate(chosen)
        ]


def tuning_config():
    """The config tune plans with: every matrix the recipe names, routers excepted."""
    from hubquant.config import parse_config

    return parse_config(_ALL_MATRICES, "tune")


def tunable_plan(model, recipe=None) -> Plan:
    from hubquant.planning import plan_for

    return plan_for(model, tuning_config(), recipe)


def tune(
    model,
    budget: Budget,
    tokens: np.ndarray,
    candidates: tuple[Candidate, ...],
    recipe=None,
    report=print,
    fused: bool = False,
    objective=None,
) -> Tuned:
    """Choose a candidate per planned matrix of the float ``model`` (a causal
    LM, or an encoder backbone) so that the estimated damage to its outputs
    (``objective``; by default the one ``objective_for`` picks) is least
    within ``budget``; ``tokens`` ``[windows, seq_len]``: calibration text.
    ``fused``: layers of a block that read the same input (the recipe's ``input_norm``: q/k/v,
    gate/up) take one candidate, as serving engines fuse them.

    ``model`` may be a ``streamed.Streamed`` preset: then its matrices are
    read a block at a time (blockwise.py) and the model is never whole in float."""
    from hubquant._memory import release_free_memory
    from hubquant.tune.allocate import allocate, check_reachable
    from hubquant.tune.damage import damage_row
    from hubquant.tune.objective import objective_for
    from hubquant.tune.streamed import Streamed

    streamed = model if isinstance(model, Streamed) else None
    model = streamed.model if streamed else model
    objective = objective or objective_for(model)
    plan = streamed.plan if streamed else tunable_plan(model, recipe)
    entries = [e for e in plan.entries if e.mode != "none"]
    source = streamed or _InMemory(backbone_of(model))
    variables = [source.variable(e) for e in entries]
    sizes = np.array([[c.size(e) for c in candidates] for e in entries], np.int64)
    float_bytes = sum(e.bytes_before for e in entries)
    planned = {id(v) for v in variables}
    other = sum(_bytes(v) for v in backbone_of(model).weights if id(v) not in planned)
    allowed = budget.matrix_bytes(float_bytes, sum(e.params for e in entries), other)
    check_reachable(sizes, allowed)  # before the minutes of work
    damage = np.zeros((len(entries), len(candidates)))
    args = (model, entries, variables, source, tokens, objective, report)
    fishers = _fisher_by_block(*args) if streamed else _fisher_whole(*args)
    for done, (i, value, fisher) in enumerate(fishers):
        w, f = source.to_matrix(entries[i], value), source.to_matrix(entries[i], fisher)
        del value, fisher  # a token table's: as large as the table
        damage[i] = damage_row(w, f, [c.for_entry(entries[i]) for c in candidates])
        del w, f
        release_free_memory()
        report(f"damage: {done + 1}/{len(entries)} {entries[i].path}")
    groups = fusion_groups(entries, fused)
    picked = allocate(
        np.array([damage[g].sum(0) for g in groups]),
        np.array([sizes[g].sum(0) for g in groups]),
        allowed,
    )
    chosen = np.zeros(len(entries), np.int64)
    for group, pick in zip(groups, picked, strict=True):
        chosen[group] = pick
    return Tuned(entries, candidates, damage, sizes, chosen, allowed, float_bytes, objective)


class _InMemory:
    """A float model held whole: its matrices are its variables' values."""

    def __init__(self, backbone):
        self.backbone = backbone

    def variable(self, entry: PlanEntry):
        from hubquant.tune.damage import matrix_variable

        return matrix_variable(self.backbone, entry)

    def to_matrix(self, entry: PlanEntry, value) -> np.ndarray:
        from hubquant.tune.damage import canonical

        return canonical(self.backbone, entry, value)


def _fisher_whole(model, entries, variables, source, tokens, objective, report):
    """``(i, value, fisher)`` per entry: one backward pass through the whole model."""
    from hubquant.tune.fisher import fisher_diagonal

    fisher = fisher_diagonal(model, tokens, variables, objective, report=report)
    for i, (v, f) in enumerate(zip(variables, fisher, strict=True)):
        yield i, v.value, f


def _fisher_by_block(model, entries, variables, source, tokens, objective, report):
    from hubquant.tune.blockwise import fisher_by_block

    return fisher_by_block(model, entries, variables, source.read, tokens, objective, report=report)


def fusion_groups(entries: list[PlanEntry], fused: bool) -> list[list[int]]:
    """Indices of entries that take one choice: the matrices of one layer and
    role (an expert layer's banks: a config chooses per layer and role), and
    with ``fused`` the layers of a block that read the same input."""
    groups: dict = {}
    for i, e in enumerate(entries):
        key = (e.path, e.role)
        if fused and e.input_norm and e.block is not None:
            key = (e.block, e.input_norm)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _bytes(variable) -> int:
    return int(np.prod(variable.shape)) * itemsize(str(variable.dtype))


__all__ = ["Tuned", "tune", "tunable_plan"]
