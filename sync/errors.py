"""Every error ks2os raises on purpose, and whether it is worth retrying.

The tree::

    Ks2osError                 base; `.hint` says how to mend it
    ├── ConfigError            bad configuration or mapping file (terminal)
    ├── TransientError         worth retrying: the cause may pass by itself
    │   └── OpenSearchUnavailable   OpenSearch kept refusing (429/5xx/timeouts)
    └── TerminalError          retrying cannot help; a person must act
        ├── MappingConflict    the live index mapping disagrees with the file
        └── DecodeError        a change record or cell could not be decoded
            └── DocumentError  a change's document could not be built (a hook
                               raised, or returned no JSON-ready body)

Jobs decide by class alone: retry a `TransientError`, stop on anything else.
"""

from __future__ import annotations


class Ks2osError(Exception):
    """Base of every error ks2os raises on purpose."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(Ks2osError):
    """A configuration or mapping file is wrong; fix the file and run again."""


class TransientError(Ks2osError):
    """A failure that may pass by itself; the operation is worth retrying."""


class TerminalError(Ks2osError):
    """A failure retrying cannot mend."""


class OpenSearchUnavailable(TransientError):
    """OpenSearch kept refusing writes (429, 5xx, timeouts) past the retry budget."""


class MappingConflict(TerminalError):
    """The live index mapping conflicts with the mapping file."""


class DecodeError(TerminalError):
    """A change record, row or cell value could not be decoded."""


class DocumentError(DecodeError):
    """One change's document could not be built from its row: bad input of that change alone.

    A `DecodeError`, so the writers dead-letter the change with this message
    and go on, as they do for a value with no document form.
    """
