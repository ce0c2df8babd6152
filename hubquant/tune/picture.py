"""Where the bits went: blocks x roles, as a text table."""

from __future__ import annotations

_SHORT = {"none": "float", "int8": "8"}


def choice_table(rows: list[dict]) -> str:
    """One line per block (and one for layers outside the blocks), one column
    per role: ``8`` (int8), ``4/64`` (int4 groups of 64, ``s`` symmetric)."""
    roles = list(dict.fromkeys(r["role"] for r in rows))
    cells: dict = {}
    for r in rows:
        cells.setdefault(r["block"], {})[r["role"]] = _short(r["choice"])
    width = max(6, *(len(role) for role in roles))
    lines = ["block  " + " ".join(f"{role:>{width}s}" for role in roles)]
    for block in sorted(cells, key=lambda b: (b is not None, b if b is not None else -1)):
        name = "-" if block is None else str(block)
        line = " ".join(f"{cells[block].get(role, ''):>{width}s}" for role in roles)
        lines.append(f"{name:>5s}  {line}")
    return "\n".join(lines)


def _short(name: str) -> str:
    if name in _SHORT:
        return _SHORT[name]
    group = name.split("_g")[1]
    return "4/" + group.replace("_sym", "s")


def check_plot(path) -> None:
    """Before any work: matplotlib is there and ``path`` can be written."""
    from pathlib import Path

    from hubquant.io.output import check_writable_file

    _pyplot()
    check_writable_file(Path(path), f"--plot: cannot write '{path}'")


def save_heatmap(rows: list[dict], path, title: str) -> None:
    """Blocks x roles, colour = bits per weight stored (scales included),
    each cell annotated with its choice (and damage, where ``rows`` have it)."""
    import os
    from pathlib import Path

    import numpy as np

    plt = _pyplot()
    roles = list(dict.fromkeys(r["role"] for r in rows))
    blocks = sorted({r["block"] for r in rows}, key=lambda b: -1 if b is None else b)
    bits = np.full((len(blocks), len(roles)), np.nan)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(roles), 1.0 + 0.32 * len(blocks)))
    for r in rows:
        y, x = blocks.index(r["block"]), roles.index(r["role"])
        bits[y, x] = 8 * r["bytes"] / max(1, r["params"])
        label = _short(r["choice"])
        if "damage" in r:
            label += f"\n{r['damage']:.1e}"
        ax.text(x, y, label, ha="center", va="center", fontsize=6)
    image = ax.imshow(bits, cmap="viridis", aspect="auto", vmin=0, vmax=np.nanmax(bits))
    ax.set_xticks(range(len(roles)), roles, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(blocks)), ["-" if b is None else b for b in blocks], fontsize=7)
    ax.set_ylabel("block")
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, label="bits per weight")
    fig.tight_layout()
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial.png")
    try:
        fig.savefig(temporary, dpi=150)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
        plt.close(fig)


def _pyplot():
    from hubquant.errors import HubquantError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HubquantError(
            "--plot needs matplotlib: pip install 'hubquant[plot]' (or pip install matplotlib)."
        ) from None
    return plt
