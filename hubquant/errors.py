"""hubquant's exceptions: one base class, one subclass per kind of problem.

Every message says what was wrong, where, and what was received. The CLI
prints the message on one line and exits with ``exit_code``.
"""


class HubquantError(Exception):
    """Base class: a problem the user can fix (exit code 2)."""

    exit_code = 2


class ConfigError(HubquantError):
    """A mode config (YAML) is malformed or names something unknown."""


class RecipeError(HubquantError):
    """A recipe is malformed, missing, or does not fit the model."""


class PresetError(HubquantError):
    """A preset cannot be found, read or reached."""


class OutputError(HubquantError):
    """The output location cannot be written."""


class ArtefactError(HubquantError):
    """A saved hubquant artefact is incomplete, corrupt or unsupported."""


def first_line(error: Exception) -> str:
    """An exception's first line of text (its type name when it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
