"""Turn a `Change` into an OpenSearch bulk action (`sync.bulk.Action`): id, routing, version, body.

Every action is an `index` with `version_type=external` at the change's
version. A delete becomes a **tombstone**: an index action whose body is only
the metadata object with `deleted: true`. OpenSearch forgets the version of a
real delete after `index.gc_deletes` (60 s), after which an older write
replayed late would resurrect the row; a tombstone keeps its version as long
as it exists. Searches go through the alias, whose filter hides tombstones
and expired rows (`sync.indices.alias_filter`).

The mapping may shape what is indexed (`sync.shaping`): an upsert whose row
the filter leaves out, or for which the hook returns None, is written as a
tombstone at the change's version, exactly like a delete, so a row that
stops matching leaves search and one that matches again comes back; the
computed fields and the hook shape the body of the others. A hook that fails
raises `DocumentError`, which the writers dead-letter with the change.

Every document carries `_ks2os = {version, source, expires_at?, deleted, token?}`;
`token` is its partition's token as fixed-width text (`sync.tokens`), present
when the builder was given a token function (every job gives it one), so
`verify` can read the index by token range.
A row with values that expire before it does (a column TTL, a static value's
TTL) also carries `value_expiry` (column -> epoch ms, stored, not indexed),
`value_expires_at` (the earliest of them, which the alias filter compares
with the clock, so the row is hidden the moment one of its values expires)
and `key` (the primary key as cell values, `sync.values.encode_cell`, so the
expiry sweep can read the row again and restate it without the value).
A dead-lettered change leaves a **mark** in place of its row's document: no
fields, `dead_letter: true`, at the change's version (`mark_body`).
Tables with static columns are written by `sync.statics` instead, from the
pieces this builder gives it (`row_fields`, `static_values`, `partition_id`,
`partition_doc_id`): their row documents add `partition` and
`static_version`, and each partition has a document of its own.

The document id is the id columns' canonical text forms, each
percent-encoded (so `:` never occurs inside one) and joined with `:`. The
forms depend only on the values, so the scan and the stream give one row one
id, on every run.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import ipaddress
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Set
from typing import Any
from urllib.parse import quote

import orjson
from cassandra.util import Date, Duration, OrderedMap, OrderedMapSerializedKey, SortedSet, Time

from sync.bulk import Action
from sync.errors import ConfigError, DocumentError, TerminalError
from sync.mapping import BigNumbers, Nulls, Routing, TableMapping, Timestamps
from sync.model import Change, Op, ScanRead
from sync.schema import TableLayout
from sync.shaping import Shaper, compile_shaper
from sync.tokens import token_text
from sync.values import encode_cell

META_FIELD = "_ks2os"
# Entries of `_ks2os`, named once: other modules (the sweep, verify) read them.
VALUE_EXPIRY = "value_expiry"
VALUE_EXPIRES_AT = "value_expires_at"
KEY_CELLS = "key"
DEAD_LETTER = "dead_letter"
# A partition document's id is this prefix and the partition id. Row ids are
# percent-encoded components (never a `!`), so no row id can start with it.
PARTITION_ID_PREFIX = "!p:"
PARTITION_KIND = "partition"
_EPOCH = dt.datetime(1970, 1, 1)
_ONE_MS = dt.timedelta(milliseconds=1)
_NANOS_PER_SECOND = 10**9


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+")


def _quote(text: str) -> str:
    """Percent-encode everything but RFC 3986 unreserved characters (so never `:`)."""
    return text if _UNRESERVED.fullmatch(text) else quote(text, safe="")


def _key_text(key: tuple[Any, ...], positions: tuple[int, ...]) -> str:
    """The key components at `positions`, each `_quote(text_form(...))`, joined with `:`."""
    parts = []
    for position in positions:
        value = key[position]
        cls = type(value)
        if cls is str:
            parts.append(value if _is_unreserved(value) else quote(value, safe=""))
        elif cls is int:
            parts.append(str(value))  # digits and `-`: nothing to encode
        else:
            parts.append(_quote(text_form(value)))
    return ":".join(parts)


_is_unreserved = _UNRESERVED.fullmatch


def expiry_meta(expiry: Mapping[str, int]) -> dict[str, Any]:
    """The `_ks2os` entries for values expiring at `expiry` (column -> epoch ms); {} if none."""
    if not expiry:
        return {}
    return {VALUE_EXPIRY: dict(expiry), VALUE_EXPIRES_AT: min(expiry.values())}


# ------------------------------------------------------------ value forms


def epoch_millis(value: dt.datetime) -> int:
    """Milliseconds since the epoch of a naive-UTC (or aware) datetime."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    # round(): the driver's float arithmetic can land a microsecond off the millisecond.
    return round((value - _EPOCH) / _ONE_MS)


def iso_timestamp(value: dt.datetime) -> str:
    """`2024-01-02T03:04:05.678Z`: UTC with milliseconds."""
    if value.tzinfo is not None or value.microsecond % 1000:
        value = _EPOCH + epoch_millis(value) * _ONE_MS
    return value.isoformat(timespec="milliseconds") + "Z"


def _iso_timestamp(value: dt.datetime) -> str:
    """`iso_timestamp` of an exact `datetime`, from its plain isoformat().

    isoformat() is fixed-width up to the seconds and adds `.ffffff` only when
    there are microseconds; at millisecond precision the first three digits
    are the milliseconds.
    """
    if value.tzinfo is not None or value.microsecond % 1000:
        value = _EPOCH + epoch_millis(value) * _ONE_MS
    text = value.isoformat()
    return text[:23] + "Z" if value.microsecond else text + ".000Z"


def iso_duration(value: Duration) -> str:
    """ISO 8601 text of a CQL duration (all parts share one sign in CQL)."""
    negative = value.months < 0 or value.days < 0 or value.nanoseconds < 0
    months, days, nanos = abs(value.months), abs(value.days), abs(value.nanoseconds)
    date_part = ""
    if months // 12:
        date_part += f"{months // 12}Y"
    if months % 12:
        date_part += f"{months % 12}M"
    if days:
        date_part += f"{days}D"
    hours, rest = divmod(nanos, 3_600 * _NANOS_PER_SECOND)
    minutes, rest = divmod(rest, 60 * _NANOS_PER_SECOND)
    seconds, fraction = divmod(rest, _NANOS_PER_SECOND)
    time_part = ""
    if hours:
        time_part += f"{hours}H"
    if minutes:
        time_part += f"{minutes}M"
    if seconds or fraction:
        time_part += f"{seconds}" + (f".{fraction:09d}".rstrip("0") if fraction else "") + "S"
    text = "P" + date_part + ("T" + time_part if time_part else "")
    if text == "P":
        text = "PT0S"
    return ("-" if negative else "") + text


def text_form(value: Any) -> str:
    """The canonical text of a value, for document ids, routing and map keys."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | decimal.Decimal | uuid.UUID | Date | Time):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dt.datetime):
        return iso_timestamp(value)
    if isinstance(value, Duration):
        return iso_duration(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    # frozen collections, tuples and UDTs in keys: their JSON form
    return orjson.dumps(_Converter().convert(value), option=orjson.OPT_SORT_KEYS).decode()


class _Converter:
    """Driver-native values -> JSON-ready values, per the mapping's choices.

    The common types are looked up by exact class (one dict probe instead of
    a chain of isinstance checks: this runs for every cell of every record);
    subclasses and the rare types fall through to `_convert_other`.
    """

    def __init__(
        self,
        timestamps: Timestamps = Timestamps.ISO8601,
        big_numbers: BigNumbers = BigNumbers.STRING,
        explicit_nulls: bool = False,
        lenient: bool = False,
    ) -> None:
        self.lenient = lenient  # unknown types become their repr instead of an error
        self.epoch_millis = timestamps is Timestamps.EPOCH_MILLIS
        self.big_as_number = big_numbers is BigNumbers.NUMBER
        self.explicit_nulls = explicit_nulls
        self.by_class: dict[type, Callable[[Any], Any]] = {
            str: _same,
            bool: _same,
            float: _same,
            type(None): _same,
            int: _int,
            decimal.Decimal: self._decimal,
            uuid.UUID: str,
            Date: str,
            Time: str,
            dt.datetime: epoch_millis if self.epoch_millis else _iso_timestamp,
            Duration: iso_duration,
            bytes: _base64,
            list: self._array,
            tuple: self._array,
            SortedSet: self._array,
            OrderedMap: self._map,
            OrderedMapSerializedKey: self._map,
            dict: self._map,
        }
        # For a body orjson serialises at once: it writes a UUID exactly as
        # str() does, so the conversion is left to it.
        self.native_by_class = {**self.by_class, uuid.UUID: _same}

    def convert(self, value: Any, varint: bool = False) -> Any:
        cls = type(value)
        if cls is str:
            return value
        if cls is int:
            if varint and not self.big_as_number:
                return str(value)
            return value if -(2**63) <= value < 2**64 else orjson.Fragment(str(value))
        handler = self.by_class.get(cls)
        if handler is not None:
            return handler(value)
        return self._convert_other(value)

    def _convert_other(self, value: Any) -> Any:
        if isinstance(value, bool | str | float):
            return value
        if isinstance(value, int):
            return _int(value)
        if isinstance(value, decimal.Decimal):
            return self._decimal(value)
        if isinstance(
            value, uuid.UUID | Date | Time | ipaddress.IPv4Address | ipaddress.IPv6Address
        ):
            return str(value)
        if isinstance(value, dt.datetime):
            return epoch_millis(value) if self.epoch_millis else iso_timestamp(value)
        if isinstance(value, dt.date):
            return value.isoformat()
        if isinstance(value, bytes | bytearray):
            return _base64(value)
        if hasattr(value, "_fields"):  # a UDT (the driver's namedtuple)
            return self._object(zip(value._fields, value, strict=True))
        if isinstance(value, Mapping | OrderedMap):
            return self._map(value)
        if isinstance(value, list | tuple | SortedSet | Set):
            return self._array(value)
        if hasattr(value, "__dict__"):  # a UDT mapped to a registered class
            return self._object(vars(value).items())
        if self.lenient:
            return repr(value)
        raise TypeError(f"no document form for a {type(value).__name__}")

    def _decimal(self, value: decimal.Decimal) -> Any:
        return orjson.Fragment(str(value)) if self.big_as_number else str(value)

    def _array(self, value: Iterable[Any]) -> list[Any]:
        convert = self.convert
        return [item if type(item) is str else convert(item) for item in value]

    def _map(self, value: Any) -> dict[str, Any]:
        convert = self.convert
        explicit_nulls = self.explicit_nulls
        # The driver's maps are Mappings whose items() looks every key up again by
        # serialising it (a quarter of a backfill's CPU in a profile); their `_items`
        # holds the same (key, value) pairs in the same order.
        items = value._items if type(value) in _DRIVER_MAPS else value.items()
        return {
            (k if type(k) is str else text_form(k)): (
                v if type(v) is str or (type(v) is int and -(2**63) <= v < 2**64) else convert(v)
            )
            for k, v in items
            if v is not None or explicit_nulls
        }

    def _object(self, items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        return {
            name: self.convert(item)
            for name, item in items
            if item is not None or self.explicit_nulls
        }


_DRIVER_MAPS = (OrderedMap, OrderedMapSerializedKey)


def _same(value: Any) -> Any:
    return value


def _int(value: int) -> Any:
    # orjson writes 64-bit integers; a larger varint goes out as its exact digits.
    return value if -(2**63) <= value < 2**64 else orjson.Fragment(str(value))


def _base64(value: bytes | bytearray) -> str:
    return base64.b64encode(value).decode("ascii")


def json_safe(value: Any) -> Any:
    """A JSON-ready form of any driver-native value (for dead letters and logs)."""
    converted = _Converter(lenient=True).convert(value)
    return orjson.loads(orjson.dumps(converted))


def _is_varint(cql_type: str | None) -> bool:
    return cql_type is not None and cql_type.strip().lower() == "varint"


class _ValueForms:
    """The value forms computed fields use, under the mapping's choices (`sync.shaping`)."""

    def __init__(self, converter: _Converter, table: TableLayout) -> None:
        self._converter = converter
        self._table = table

    def text(self, value: Any) -> str:
        return text_form(value)

    def field(self, column: str, value: Any) -> Any:
        return self._converter.convert(value, _is_varint(self._table.cql_type(column)))


# ------------------------------------------------------------- the builder


class DocumentBuilder:
    """Builds bulk actions for one table's changes under one mapping."""

    def __init__(
        self,
        mapping: TableMapping,
        table: TableLayout,
        tokens: Callable[[tuple[Any, ...]], int] | None = None,
    ) -> None:
        self.mapping = mapping
        self.table = table
        # The partition's token from a row or partition key (sync.tokens.PartitionTokens).
        self._tokens = tokens
        spec = mapping.document
        self._id_positions = self._positions(self._id_columns(), "document.id")
        self._routing_positions = (
            self._positions(table.partition_key, "document.routing")
            if spec.routing is Routing.PARTITION
            else None
        )
        self._explicit_nulls = spec.nulls is Nulls.EXPLICIT
        self._converter = _Converter(spec.timestamps, spec.big_numbers, self._explicit_nulls)
        self._plan = self._plan_fields()
        self._planned = frozenset(column for column, _, _ in self._plan)
        self._plain_plan: tuple[tuple[str, str], ...] | None = (
            None
            if self._explicit_nulls or any(varint for _, _, varint in self._plan)
            else tuple((column, field_name) for column, field_name, _ in self._plan)
        )
        # Without an include list, columns the schema did not list still go in.
        self._take_unplanned = spec.include is None
        self._static_columns = frozenset(table.static)
        self.static_fields = frozenset(
            field_name for column, field_name, _ in self._plan if column in self._static_columns
        )
        # Static column -> its document field (a static column the mapping leaves out has none).
        self.static_field = {
            column: field_name
            for column, field_name, _ in self._plan
            if column in self._static_columns
        }
        # Filter, computed fields and hook, checked against the table now (one-line
        # ConfigErrors at start); None when the mapping has none.
        self.shaper: Shaper | None = compile_shaper(
            spec,
            table,
            mapping.path,
            _ValueForms(self._converter, table),
            taken={field_name: column for column, field_name, _ in self._plan},
            explicit_nulls=self._explicit_nulls,
        )
        # Whose expiry can change a document: the columns it shows, or, when a filter,
        # computed field or hook may read any column (or every column goes in), all.
        self._expiry_columns: frozenset[str] | None = (
            None if self.shaper is not None or self._take_unplanned else self._planned
        )

    def _id_columns(self) -> tuple[str, ...]:
        """The id columns: the whole primary key, in the mapping's order if it gives one.

        An id of only some key columns would give distinct rows one document
        (the last write wins), and a delete of one would hide the others.
        """
        columns = self.mapping.document.id
        if columns is None:
            return self.table.key_columns
        missing = [c for c in self.table.key_columns if c not in columns]
        if missing and set(columns) <= self.table.key_set:
            raise ConfigError(
                f"{self.mapping.path}: document.id leaves out primary-key column(s) "
                f"{', '.join(missing)} of {self.table.qualified_name}: rows that differ only "
                "there would share one document, and deleting one would hide the others",
                hint=f"list every primary-key column, in any order: "
                f"{', '.join(self.table.key_columns)}",
            )
        return columns

    def _positions(self, columns: Iterable[str], key: str) -> tuple[int, ...]:
        key_columns = self.table.key_columns
        positions = []
        for column in columns:
            if column not in key_columns:
                raise ConfigError(
                    f"{self.mapping.path}: {key}: {column!r} is not a primary-key column of "
                    f"{self.table.qualified_name} (a delete carries only the key)",
                    hint=f"use columns of the primary key: {', '.join(key_columns)}",
                )
            positions.append(key_columns.index(column))
        return tuple(positions)

    def _plan_fields(self) -> tuple[tuple[str, str, bool], ...]:
        """(column, field name, is varint) for each column known up front, in schema order."""
        spec = self.mapping.document
        table = self.table
        if spec.include is not None:
            columns = [*table.key_columns, *(c for c in spec.include if not table.is_key(c))]
        else:
            columns = [*table.key_columns, *table.static, *table.column_types]
        plan = {}
        for column in columns:
            if column not in spec.exclude and column not in plan:
                varint = _is_varint(table.cql_type(column))
                plan[column] = (column, spec.rename.get(column, column), varint)
        return tuple(plan.values())

    def doc_id(self, key: tuple[Any, ...]) -> str:
        return _key_text(key, self._id_positions)

    def routing(self, key: tuple[Any, ...]) -> str | None:
        if self._routing_positions is None:
            return None
        return _key_text(key, self._routing_positions)

    # ------------------------------------------------ tables with static columns

    def partition_id(self, key: tuple[Any, ...]) -> str:
        """The partition's id (its key's components, as in a document id), from a row or
        partition key: the partition-key columns come first in both."""
        count = len(self.table.partition_key)
        return ":".join([_quote(text_form(value)) for value in key[:count]])

    def token(self, key: tuple[Any, ...]) -> str | None:
        """`_ks2os.token` of a row or partition key: its partition's token as text (None
        without a token function)."""
        tokens = self._tokens
        return None if tokens is None else token_text(tokens(key))

    @staticmethod
    def partition_doc_id(partition_id: str) -> str:
        """The id of the partition document that holds the partition's static values."""
        return PARTITION_ID_PREFIX + partition_id

    @staticmethod
    def source_kind(change: Change) -> str:
        return "scan" if isinstance(change.provenance, ScanRead) else "stream"

    def row_fields(self, image: Mapping[str, Any]) -> dict[str, Any]:
        """The document fields of a row image without its static columns."""
        statics = self.static_fields
        return {name: value for name, value in self._source(image).items() if name not in statics}

    def static_values(self, image: Mapping[str, Any]) -> dict[str, Any]:
        """The document fields of the static columns in `image` (the partition's statics)."""
        statics = self.static_fields
        return {name: value for name, value in self._source(image).items() if name in statics}

    # ------------------------------------------------------------ expiry and marks

    def value_expiry(self, change: Change) -> dict[str, int]:
        """Column -> expiry of the change's values that expire before its row and can show.

        For a row of a static table, only its own (non-static) values: the
        statics' expiries travel with the partition's statics.
        """
        expiry = change.value_expiry
        if not expiry or change.op is Op.DELETE:
            return {}
        wanted = self._expiry_columns
        statics = self._static_columns if not change.static_only else frozenset()
        return {
            column: at
            for column, at in expiry.items()
            if column not in statics and (wanted is None or column in wanted)
        }

    def key_cells(self, key: tuple[Any, ...]) -> list[dict[str, Any]]:
        """The key as cell values, from which `sync.values.decode_cell` gives it back."""
        return [encode_cell(value) for value in key]

    def mark_body(self, change: Change) -> dict[str, Any]:
        """The body that marks a row whose change was dead-lettered, at the change's version.

        No fields: the alias filter hides the mark, so a search never returns
        the row's older state as if it were current; a newer change replaces it.
        """
        source = self.source_kind(change)
        meta = {"version": change.version, "source": source, "deleted": False, DEAD_LETTER: True}
        token = self.token(change.key)
        if token is not None:
            meta["token"] = token
        return {META_FIELD: meta}

    def carries_statics(self, change: Change) -> bool:
        """Does the change say what the partition's static values are, at its version?

        A static-only change does; so does a snapshot row, which reads the
        partition's statics with the row (a missing one is null), unless its
        position says it leaves them to the partition document (a repair); a
        stream row record only when it has static cells (Keyspaces sends a
        write that touches statics and row as two records, so normally it has
        none).
        """
        if change.static_only:
            return True
        if change.op is Op.DELETE or change.image is None:
            return False
        if change.static_columns is not None:
            return bool(change.static_columns)
        if isinstance(change.provenance, ScanRead):
            return change.provenance.statics
        return any(column in change.image for column in self.table.static)

    def stated_statics(self, change: Change) -> frozenset[str]:
        """The static columns a change that carries statics states (see `Change`)."""
        if change.static_columns is not None:
            return change.static_columns
        if change.static_only or isinstance(change.provenance, ScanRead):
            return self._static_columns
        image = change.image or {}
        return frozenset(column for column in self._static_columns if column in image)

    def action_for(self, change: Change) -> Action:
        """The bulk action that writes `change` (a tombstone for a delete).

        Only for tables without static columns: a static-only change has no
        single action; `BulkWriter` writes those tables' changes by merging
        (`sync.statics`).
        """
        if change.static_only:
            raise TerminalError(
                f"{self.table.qualified_name}: a static-only change (partition {change.key!r}) "
                "has no single versioned action",
                hint="write it through BulkWriter, which merges statics into the partition's rows",
            )
        version = change.version
        source = "scan" if isinstance(change.provenance, ScanRead) else "stream"
        image = change.image
        shown: dict[str, Any] | None = None
        if change.op is Op.UPSERT and image is not None:
            shaper = self.shaper
            if shaper is None:
                shown = self._source(image, native=True)
            else:
                shown = self._shaped(shaper, image)
        body: dict[str, Any]
        meta: dict[str, Any]
        if shown is None:  # a delete, or a row the filter or the hook leaves out
            meta = {"version": version, "source": source, "deleted": True}
            body = {META_FIELD: meta}
        else:
            body = shown
            expires_at = change.expires_at_ms
            if expires_at is None:
                meta = {"version": version, "source": source, "deleted": False}
            else:
                meta = {
                    "version": version,
                    "source": source,
                    "expires_at": expires_at,
                    "deleted": False,
                }
            if change.value_expiry:
                expiry = self.value_expiry(change)
                if expiry:
                    meta.update(expiry_meta(expiry))
                    meta[KEY_CELLS] = self.key_cells(change.key)
            body[META_FIELD] = meta
        key = change.key
        if self._tokens is not None:
            meta["token"] = token_text(self._tokens(key))
        routing = self._routing_positions
        return Action(
            _key_text(key, self._id_positions),
            orjson.dumps(body),
            routing=None if routing is None else _key_text(key, routing),
            version=version,
        )

    def row_document(self, change: Change) -> tuple[Change, dict[str, Any]]:
        """For `sync.statics`: the change as its row document is written, and the row's fields
        (without statics; empty for a delete).

        A row the filter or the hook leaves out comes back as a delete of the
        same key at the same version and source, so the merge writes a
        tombstone, exactly as for a delete.
        """
        image = change.image
        if change.op is Op.DELETE or image is None:
            return change, {}
        shaper = self.shaper
        if shaper is None:
            return change, self.row_fields(image)
        shaped = self._shaped(shaper, image)
        if shaped is None:
            return Change(Op.DELETE, change.key, None, change.version, change.provenance), {}
        statics = self.static_fields
        return change, {name: value for name, value in shaped.items() if name not in statics}

    def _shaped(self, shaper: Shaper, image: Mapping[str, Any]) -> dict[str, Any] | None:
        """The fields of an upsert's document under the mapping's filter, computed fields and
        hook; None when the row is not indexed."""
        if not shaper.matches(image):
            return None
        hook = shaper.hook
        if hook is None:
            return shaper.finish(image, self._source(image, native=True))
        # The hook never sees statics: a snapshot row has them and a stream row record
        # does not, so with them one row state could give two bodies.
        row = image
        if self._static_columns:
            row = {c: v for c, v in image.items() if c not in self._static_columns}
        body = shaper.finish(
            row, self.row_fields(image) if self._static_columns else self._source(image)
        )
        if body is not None and META_FIELD in body:
            raise DocumentError(
                f"hook {hook.name} returned the field {META_FIELD}, which ks2os keeps for itself"
            )
        return body

    def _source(self, image: Mapping[str, Any], native: bool = False) -> dict[str, Any]:
        """The document fields of `image`: JSON-ready values, or for `native`, values
        orjson writes identically itself (a UUID stays a UUID)."""
        converter = self._converter
        by_class = converter.native_by_class if native else converter.by_class
        convert = converter.convert
        explicit_nulls = self._explicit_nulls
        source: dict[str, Any] = {}
        if self._plain_plan is not None:
            # No varint column and nulls left out: the loop below, with less to ask.
            for column, field_name in self._plain_plan:
                value = image.get(column)
                if value is None:
                    continue
                cls = type(value)
                if cls is str or (cls is int and -(2**63) <= value < 2**64):
                    source[field_name] = value
                else:
                    handler = by_class.get(cls)
                    source[field_name] = handler(value) if handler is not None else convert(value)
        else:
            self._source_planned(image, by_class, source)
        # Without an include list, columns the schema did not list still go in.
        if self._take_unplanned and not image.keys() <= self._planned:
            spec = self.mapping.document
            for column, value in image.items():
                if column in self._planned or column in spec.exclude:
                    continue
                if value is not None or explicit_nulls:
                    source[spec.rename.get(column, column)] = convert(value)
        return source

    def _source_planned(
        self, image: Mapping[str, Any], by_class: Mapping[type, Any], source: dict[str, Any]
    ) -> None:
        convert = self._converter.convert
        explicit_nulls = self._explicit_nulls
        for column, field_name, varint in self._plan:
            value = image.get(column)
            if value is None:
                if explicit_nulls:
                    source[field_name] = None
                continue
            cls = type(value)
            if cls is str:
                source[field_name] = value  # the commonest value needs no conversion
            elif cls is int and not varint and -(2**63) <= value < 2**64:
                source[field_name] = value
            else:
                handler = None if varint else by_class.get(cls)
                source[field_name] = (
                    handler(value) if handler is not None else convert(value, varint)
                )
