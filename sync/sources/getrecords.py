"""GetRecords through boto3, with the body parsed by orjson instead of botocore's shape parser.

botocore walks a GetRecords reply shape by shape in Python: on a page of
1,000 records that costs ten times what `orjson.loads` of the same bytes
does, and it was the follower's ceiling. The client still makes the call
(endpoint, SigV4 signing, retries, error parsing); only the parse of a
successful body changes:

- a handler on botocore's `before-parse.keyspacesstreams.GetRecords` event
  takes the raw body of a 2xx reply and hands botocore `{}` to parse, so its
  parser does nothing; the body comes back beside the parsed (empty) reply;
- any other status is left alone: botocore parses the error as always
  (ThrottlingException, ValidationException with its `errorCode`, ...);
- the handler acts only inside a call made through `raw_get_records`, on the
  calling thread, so other callers of the same client get botocore's parse.

`parse_body` turns the body into what botocore would have returned for the
fields ks2os reads. The wire forms differ from botocore's in two places:
`createdAt` is epoch seconds on the wire and a datetime from botocore
(converted here exactly as botocore converts it, so versions do not move),
and `blobT` stays base64 text (`sync.values` decodes both forms to the same
bytes). Members botocore would drop (unmodelled ones, nulls) are kept; the
decoders treat a null like a missing member, and ignore members they do not
read. The result: the same `Change`s, and byte-identical bulk bodies
(`tests/sync/test_getrecords.py`).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import orjson
from botocore.client import BaseClient

from sync.errors import TransientError

EVENT = "before-parse.keyspacesstreams.GetRecords"
_HANDLER_ID = "ks2os-getrecords-raw-body"
# Where the handler leaves the body in the reply botocore returns.
_RAW_BODY = "ks2osRawBody"
_EMPTY_BODY = b"{}"

_wanted = threading.local()  # .on: this thread is inside a raw get_records call


def raw_get_records(client: Any) -> Callable[..., dict[str, Any]]:
    """A drop-in for `client.get_records` whose reply is parsed from the raw body.

    It takes boto3's keyword arguments. Anything but a botocore client itself
    (a wrapper that looks at or changes replies, a stand-in) gets its own
    `get_records`, so it sees botocore's parse as before; a reply botocore
    parsed anyway (the handler saw no body) is returned as it is: the decoders
    read both forms.
    """
    if not _is_botocore_client(client):
        plain: Callable[..., dict[str, Any]] = client.get_records
        return plain
    client.meta.events.register(EVENT, _take_raw_body, unique_id=_HANDLER_ID)
    call = client.get_records

    def get_records(**kwargs: Any) -> dict[str, Any]:
        _wanted.on = True
        try:
            reply: dict[str, Any] = call(**kwargs)
        finally:
            _wanted.on = False
        body = reply.pop(_RAW_BODY, None)
        return reply if body is None else parse_body(body)

    return get_records


def _is_botocore_client(client: Any) -> bool:
    return isinstance(client, BaseClient)


def _take_raw_body(
    response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
) -> None:
    """botocore's before-parse hook: keep a successful body, give botocore `{}` to parse."""
    if not getattr(_wanted, "on", False) or response_dict.get("status_code", 500) >= 300:
        return
    body = response_dict.get("body")
    if not isinstance(body, bytes | bytearray):
        return  # a streaming body: leave it to botocore
    customized_response_dict[_RAW_BODY] = bytes(body)
    response_dict["body"] = _EMPTY_BODY


def parse_body(body: bytes) -> dict[str, Any]:
    """A GetRecords reply body -> the reply, as botocore would give the fields ks2os reads."""
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TransientError(
            f"Keyspaces Streams answered GetRecords with a body that is not JSON: {exc}"
        ) from None
    if not isinstance(reply, dict):
        raise TransientError(
            f"Keyspaces Streams answered GetRecords with a {type(reply).__name__}, not an object"
        )
    records = reply.get("changeRecords")
    if records is None:
        reply.pop("changeRecords", None)
    elif not isinstance(records, list):
        raise TransientError(
            "Keyspaces Streams answered GetRecords with a changeRecords that is not a list"
        )
    else:
        for record in records:
            if type(record) is dict:
                created = record.get("createdAt")
                if created is not None:
                    record["createdAt"] = created_at(created)
    for name in ("nextShardIterator", "iteratorDescription"):
        if name in reply and reply[name] is None:
            del reply[name]  # botocore leaves a null member out
    return reply


def created_at(value: Any) -> Any:
    """`createdAt` as botocore parses a `Date` member: an aware datetime, from epoch seconds.

    The same conversion botocore makes (`datetime.fromtimestamp`, microseconds
    rounded half to even), so the millisecond ks2os derives from it, and hence
    every version, is the one a botocore-parsed reply gives.
    """
    if type(value) is float or type(value) is int:
        try:
            return _from_timestamp(value, _UTC)
        except (OverflowError, OSError, ValueError):
            pass
    from botocore.utils import parse_timestamp

    try:
        return parse_timestamp(value)
    except (TypeError, ValueError, OverflowError, OSError, RuntimeError):
        # Text the reader refuses: the record is dead-lettered, where botocore's
        # parser would have failed the whole page.
        return str(value)


_UTC = dt.UTC
_from_timestamp = dt.datetime.fromtimestamp
