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


class WeightsError(HubquantError):
    """A model's weights cannot be quantized as they are (NaN, Inf)."""


class ArtefactError(HubquantError):
    """A saved hubquant artefact is incomplete, corrupt or unsupported."""


def first_line(error: Exception) -> str:
    """An exception's first line of text (its type name when it has none).

    A first line that only announces what follows (Keras' "A total of 1 objects
    could not be loaded. Example error message for object <...>:") is joined with
    the next non-empty line, which says what went wrong.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    head = lines[0]
    if head.endswith(":") and len(lines) > 1:
        head = head.split(" Example error message for object")[0].rstrip(":")
        return f"{head} {lines[1]}"
    return head


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: staging folders are removed on the way out.

    ``pending`` stays set once it is raised: HDF5's Python callbacks can swallow
    the exception, so an output is checked for it before it is put in place."""

    pending = False
