"""Where recipes come from beyond the shipped ones: folders and plugin packages.

Order: shipped recipes, then the folders in ``HUBQUANT_RECIPE_PATH``
(``os.pathsep``-separated), then the packages named by entry points of the
group ``hubquant.recipes``. An entry point's value is a package name
(``my_plugin.recipes``) whose folder holds ``*.yaml`` recipes. hubquant
locates that folder from the distribution's file list (or, for editable
installs, on ``sys.path``) and reads the files; it never imports the plugin,
so no plugin code runs.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hubquant.errors import RecipeError

RECIPE_PATH_VAR = "HUBQUANT_RECIPE_PATH"
ENTRY_POINT_GROUP = "hubquant.recipes"


@dataclass(frozen=True)
class RecipeFile:
    """One recipe file and where it was found (``shipped``, the variable, a plugin)."""

    path: Path
    origin: str


def folder_files(folder: Path, origin: str) -> list[RecipeFile]:
    """The ``*.yaml`` files of ``folder``, sorted; an unreadable folder is named."""
    try:
        names = sorted(p for p in folder.iterdir() if p.suffix == ".yaml")
    except OSError as e:
        raise RecipeError(
            f"{origin}: cannot read recipe folder '{folder}': {e.strerror or e}. "
            f"Received: folder='{folder}'"
        ) from None
    return [RecipeFile(p, origin) for p in names if p.is_file()]


def env_files() -> list[RecipeFile]:
    """Recipes in the folders named by ``HUBQUANT_RECIPE_PATH``."""
    value = os.environ.get(RECIPE_PATH_VAR, "")
    files = []
    for entry in value.split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser()
        if not folder.is_dir():
            raise RecipeError(
                f"{RECIPE_PATH_VAR}: '{entry}' is not a folder: expected folders of "
                f"recipe YAML separated by '{os.pathsep}'. Received: {RECIPE_PATH_VAR}={value!r}"
            )
        files += folder_files(folder, RECIPE_PATH_VAR)
    return files


def plugin_files() -> list[RecipeFile]:
    """Recipes in the package folders named by ``hubquant.recipes`` entry points."""
    points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    files = []
    for point in sorted(points, key=lambda p: p.name):
        origin = _describe(point)
        files += folder_files(plugin_folder(point, origin), origin)
    return files


def plugin_folder(point, origin: str) -> Path:
    """The folder of the package an entry point names, found without importing it."""
    value = point.value.strip()
    parts = value.split(".")
    if ":" in value or not all(p.isidentifier() for p in parts):
        raise RecipeError(
            f"{origin}: expected a package name such as 'my_plugin.recipes' whose "
            f"folder holds recipe YAML. Received: value={value!r}"
        )
    folder = _from_distribution(point, parts) or _from_sys_path(parts)
    if folder is None:
        raise RecipeError(
            f"{origin}: cannot read recipe folder of package '{value}': no folder "
            f"'{'/'.join(parts)}' in the distribution's files or on sys.path"
        )
    return folder


def _from_distribution(point, parts: list[str]) -> Path | None:
    dist = getattr(point, "dist", None)
    files = (dist.files or []) if dist is not None else []
    if not any(PurePosixPath(f).parts[: len(parts)] == tuple(parts) for f in files):
        return None
    folder = Path(dist.locate_file(PurePosixPath(*parts)))
    return folder if folder.is_dir() else None


def _from_sys_path(parts: list[str]) -> Path | None:
    for entry in sys.path:
        folder = Path(entry or ".", *parts)
        if folder.is_dir():
            return folder
    return None


def _describe(point) -> str:
    dist = getattr(point, "dist", None)
    owner = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"plugin '{point.name}'{owner} ({ENTRY_POINT_GROUP} = {point.value})"
