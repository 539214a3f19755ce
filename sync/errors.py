"""Every error ks2os raises on purpose, what it means, and who handles it.

The tree::

    Ks2osError                   base; `.hint` says how to mend it
    ├── ConfigError              the configuration, a mapping file or the command line is
    │   │                        wrong, or a service refused what it says (credentials,
    │   │                        a mapping OpenSearch cannot create, a port in use): exit 2
    │   └── MappingConflict      the mapping file changed in a way the live index cannot
    │                            take in place (`sync.drift`): a reindex applies it
    ├── TransientError           may pass by itself (a service unreachable, pushing back,
    │   │                        timing out): retried through `sync.retry`, then exit 1
    │   └── OpenSearchUnavailable    OpenSearch kept failing (429, 5xx, timeouts, connection)
    ├── TerminalError            retrying cannot mend it; a person must act: exit 1
    │   ├── OpenSearchRefused    OpenSearch refused a request (`.status`, `.error_type`)
    │   └── StreamsRefused       the Keyspaces Streams API refused a request (`.code`, `.detail`)
    └── DecodeError              one record, row or value cannot be decoded: dead-letter it
        └── DocumentError        a change's document could not be built (a hook raised,
                                 or returned no JSON-ready body): dead-letter it

Elsewhere, beside the code that raises them: `LeaseLost` (sync.state, a
control signal: drop the unit, another worker owns it) and `StreamGap`
(sync.sources.streams, a TerminalError).

The contract, kept at every boundary with a library:

- No library exception leaves its boundary. opensearch-py's are converted in
  `sync.bulk` (documents) and `sync.indices` (indexes and aliases);
  cassandra-driver's in `sync.keyspaces`; boto3's in `sync.sources.streams`;
  the metrics server's socket errors in `sync.metrics`.
- Transient failures are retried in one place per client, through the one
  policy of `sync.retry`, whose waits end at once when the job is asked to
  stop; what outlasts it is raised as a `TransientError`. Start-up checks
  (index, table, stream) do not retry: a wrong endpoint is reported at once.
- `DecodeError` means the same wherever it is raised: that one record, row or
  value is bad input. The code that was decoding it dead-letters it with the
  error as the reason and goes on; it is never a reason to stop a job.
- `sync.cli.main` turns every `Ks2osError` into one line on stderr
  (`one_line`: the hint after a colon), with exit code 2 for a `ConfigError`
  and 1 for the others.
"""

from __future__ import annotations


class Ks2osError(Exception):
    """Base of every error ks2os raises on purpose."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def one_line(exc: Ks2osError) -> str:
    """The error and how to mend it, on one line."""
    text = " ".join(str(exc).split())
    return f"{text}: {exc.hint}" if exc.hint else text


class ConfigError(Ks2osError):
    """Something the user configured is wrong; fix it and run again."""


class TransientError(Ks2osError):
    """A failure that may pass by itself; the operation is worth retrying."""


class TerminalError(Ks2osError):
    """A failure retrying cannot mend."""


class DecodeError(Ks2osError):
    """One change record, row or cell value could not be decoded: dead-letter material."""


class OpenSearchUnavailable(TransientError):
    """OpenSearch was unreachable or kept pushing back (429, 5xx, timeouts)."""


class OpenSearchRefused(TerminalError):
    """OpenSearch refused a request for a reason retrying cannot mend."""

    def __init__(self, message: str, hint: str = "", *, status: int, error_type: str) -> None:
        super().__init__(message, hint)
        self.status = status
        self.error_type = error_type  # OpenSearch's error type, e.g. mapper_parsing_exception


class StreamsRefused(TerminalError):
    """The Keyspaces Streams API refused a request for a reason retrying cannot mend."""

    def __init__(self, message: str, hint: str = "", *, code: str, detail: str = "") -> None:
        super().__init__(message, hint)
        self.code = code  # the AWS error code, e.g. ValidationException
        self.detail = detail  # Keyspaces' finer errorCode, e.g. TrimmedDataAccess


class MappingConflict(ConfigError):
    """The mapping file changed in a way the live index cannot take in place.

    A configuration matter (exit 2): the file asks for an index that only
    `ks2os reindex` can build.
    """


class DocumentError(DecodeError):
    """One change's document could not be built from its row: bad input of that change alone.

    A `DecodeError`, so the writers dead-letter the change with this message
    and go on, as they do for a value with no document form.
    """
