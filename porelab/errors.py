"""Errors that reach the user as one line (the CLI prints ``porelab: error: <message>``, exit 2)."""


class PorelabError(Exception):
    """Base class: a problem the user can fix (bad input, unknown name, missing file).

    The message must be one line and name the file or value at fault.
    """


class ScanError(PorelabError, ValueError):
    """A scan or mask file that is missing, unreadable, empty, 2-D, non-finite, constant, or inconsistent."""


class ModelError(PorelabError, LookupError):
    """An unknown network name, a missing model directory, or a registered model that does not resolve."""


class ConfigError(PorelabError, ValueError):
    """An invalid option value or combination of options."""
