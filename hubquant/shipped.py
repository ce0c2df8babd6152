"""Where the shipped recipes and configs live, installed or in a checkout."""

import importlib
from pathlib import Path

_PACKAGES = {"recipes": "hubquant.shipped_recipes", "configs": "hubquant.shipped_configs"}


def shipped_dir(kind: str) -> Path:
    """The folder of shipped YAML files of ``kind`` ('recipes' or 'configs').

    In a checkout they are the top-level folders; an installed hubquant carries
    them as the data packages ``hubquant.shipped_recipes`` / ``shipped_configs``.
    """
    checkout = Path(__file__).resolve().parent.parent / kind
    if checkout.is_dir():
        return checkout
    package = importlib.import_module(_PACKAGES[kind])
    return Path(next(iter(package.__path__)))


def shipped_files(kind: str) -> dict[str, Path]:
    """Shipped YAML files of ``kind`` by name (file stem), sorted."""
    files = sorted(shipped_dir(kind).glob("*.yaml"))
    return {f.stem: f for f in files}
