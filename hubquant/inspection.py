"""``hubquant inspect``: what an artefact holds, read from its metadata alone.

Works on a hubquant folder (any formats), a ``.keras`` archive, a hubquant
``.safetensors`` file and a Hugging Face (compressed-tensors) export. Nothing
is built or loaded: only headers and JSON are read.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

from hubquant.errors import ArtefactError
from hubquant.io.artefact import check_weight_files, missing_files, read_metadata
from hubquant.io.safetensors_format import files_and_metadata
from hubquant.plan import Plan


def inspect_path(path: str | Path) -> dict:
    """A description of the artefact at ``path`` (see ``format_inspection``)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".keras":
        return _inspect_keras(path)
    if path.is_file() and path.suffix == ".safetensors":
        return _inspect_safetensors(path)
    if path.is_dir() and (path / "hubquant.json").is_file():
        return _inspect_folder(path)
    if path.is_dir() and (path / "config.json").is_file():
        return _inspect_hf(path)
    raise ArtefactError(f"'{path}' is not a hubquant artefact (folder, .keras or .safetensors).")


def format_inspection(info: dict) -> str:
    lines = [f"{info['path']}: {info['kind']}, {'complete' if info['complete'] else 'INCOMPLETE'}"]
    for missing in info.get("missing", []):
        lines.append(f"  missing: {missing}")
    for key in ("hubquant_version", "format_version", "recipe", "config_source"):
        if info.get(key) is not None:
            lines.append(f"  {key.replace('_', ' ')}: {info[key]}")
    if info.get("bytes_before"):
        ratio = info["bytes_before"] / max(1, info["bytes_after"])
        lines.append(
            f"  size: {info['bytes_before']:,} -> {info['bytes_after']:,} bytes ({ratio:.2f}x)"
        )
    if info.get("plan"):
        lines.append(f"  {'role':16s} {'mode':5s} {'group':>6s} {'sym':>4s} {'count':>6s}")
        for row in info["plan"]:
            group = (
                "-"
                if row["mode"] != "int4"
                else "chan"
                if row["group_size"] == -1
                else row["group_size"]
            )
            sym = "-" if row["mode"] == "none" else "yes" if row["symmetric"] else "no"
            lines.append(
                f"  {row['role']:16s} {row['mode']:5s} {group!s:>6s} {sym:>4s} {row['count']:6d}"
            )
    for name, group in info.get("config_groups", {}).items():
        w = group["weights"]
        lines.append(
            f"  {name}: int{w['num_bits']} {w['strategy']} group {w.get('group_size')} symmetric {w['symmetric']}: {len(group['targets'])} modules"
        )
    return "\n".join(lines)


def _plan_summary(plan: Plan) -> dict:
    counts = Counter((e.role, e.mode, e.group_size, e.symmetric) for e in plan.entries)
    totals = plan.totals()
    return {
        "recipe": plan.recipe,
        "config_source": plan.config_source,
        "bytes_before": totals["bytes_before"],
        "bytes_after": totals["bytes_after"],
        "plan": [
            {"role": r, "mode": m, "group_size": g, "symmetric": s, "count": n}
            for (r, m, g, s), n in counts.items()
        ],
        "layers": [layer_row(e) for e in plan.entries],
    }


def layer_row(entry) -> dict:
    """One matrix of a Plan: where it is and how it is stored (``choice``: a
    ``tune`` candidate name)."""
    from hubquant.tune.candidates import Candidate

    return {
        "path": entry.path,
        "role": entry.role,
        "block": entry.block,
        "choice": Candidate(entry.mode, entry.group_size, entry.symmetric).name,
        "bytes": entry.bytes_after,
        "params": entry.params,
    }


def _inspect_folder(folder: Path) -> dict:
    meta = read_metadata(folder)
    missing = missing_files(folder, meta)
    check_weight_files(folder)
    return {
        "path": str(folder),
        "kind": f"hubquant folder ({', '.join(meta.get('formats', []))})",
        "hubquant_version": meta.get("hubquant_version"),
        "format_version": meta.get("format_version"),
        "complete": not missing,
        "missing": missing,
        **_plan_summary(Plan.from_dict(meta["plan"])),
    }


def _inspect_keras(path: Path) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            names = set(archive.namelist())
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise ArtefactError(
            f"'{path}' is truncated or corrupt: not a readable .keras archive ({e})."
        ) from None
    hub = _keras_plan(config)
    if hub is None:
        raise ArtefactError(f"'{path}' is a .keras archive without a hubquant Plan.")
    return {
        "path": str(path),
        "kind": ".keras archive",
        "hubquant_version": hub.get("version"),
        "format_version": hub["plan"].get("format_version"),
        "complete": "model.weights.h5" in names,
        "missing": [] if "model.weights.h5" in names else ["model.weights.h5"],
        **_plan_summary(Plan.from_dict(hub["plan"])),
    }


def _keras_plan(config: dict) -> dict | None:
    """The hubquant entry of a saved task's (or backbone's) config, if any."""
    try:
        backbone = config["config"].get("backbone", config)
        hub = backbone.get("config", {}).get("hubquant")
    except (KeyError, TypeError, AttributeError):
        return None
    return hub if isinstance(hub, dict) and "plan" in hub else None


def _inspect_safetensors(path: Path) -> dict:
    _, meta = files_and_metadata(path)
    return {
        "path": str(path),
        "kind": "hubquant safetensors",
        "hubquant_version": meta.get("hubquant_version"),
        "format_version": int(meta["format_version"]),
        "complete": True,
        **_plan_summary(Plan.from_dict(json.loads(meta["plan"]))),
    }


def _inspect_hf(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    qc = config.get("quantization_config")
    if not qc or qc.get("quant_method") != "compressed-tensors":
        raise ArtefactError(
            f"'{folder}' is a Hugging Face folder without compressed-tensors quantization."
        )
    weights = folder / "model.safetensors"
    complete = weights.is_file() or (folder / "model.safetensors.index.json").is_file()
    return {
        "path": str(folder),
        "kind": f"Hugging Face export ({config.get('model_type')}, {qc.get('format')})",
        "complete": complete,
        "missing": [] if complete else ["model.safetensors"],
        "config_groups": qc.get("config_groups", {}),
    }
