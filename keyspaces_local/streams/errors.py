"""The Keyspaces Streams errors, as the service model names them.

Each carries what the HTTP layer needs to answer the way AWS does: the
exception's shape name (`__type`), the HTTP status and, for
ValidationException, the model's `errorCode`.
"""

from __future__ import annotations

import enum


class ValidationCode(enum.Enum):
    INVALID_FORMAT = "InvalidFormat"
    TRIMMED_DATA_ACCESS = "TrimmedDataAccess"
    EXPIRED_ITERATOR = "ExpiredIterator"
    EXPIRED_NEXT_TOKEN = "ExpiredNextToken"


class StreamsError(Exception):
    """Base of every error the Streams API answers with."""

    type_name = "InternalServerException"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(StreamsError, ValueError):
    """A request the service refuses; a ValueError too, for Python callers of the control API."""

    type_name = "ValidationException"
    status = 400

    def __init__(self, message: str, code: ValidationCode = ValidationCode.INVALID_FORMAT) -> None:
        super().__init__(message)
        self.code = code


class ResourceNotFound(StreamsError):
    type_name = "ResourceNotFoundException"
    status = 400


class Throttling(StreamsError):
    type_name = "ThrottlingException"
    status = 400


class InternalServerError(StreamsError):
    type_name = "InternalServerException"
    status = 500
