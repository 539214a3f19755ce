"""The Streams HTTP API through the real boto3 client: listing, paging, iterators, records,
errors, retention and faults. Every response is also checked against the service model
(see conftest `check_shape`)."""

from __future__ import annotations

import datetime
import urllib.request
from typing import Any

import orjson
import pytest

from keyspaces_local.schema import ViewType


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return orjson.loads(response.read())


def test_list_streams_pages_with_the_sdk_paginator(stack: Any, make_table: Any) -> None:
    arns = [stack.store.enable_stream(make_table(f"t{i}")) for i in range(7)]
    other = stack.store.enable_stream(make_table("x", keyspace="other"))
    pages = list(
        stack.client.get_paginator("list_streams").paginate(PaginationConfig={"PageSize": 3})
    )
    assert len(pages) == 3
    listed = [s["streamArn"] for page in pages for s in page["streams"]]
    assert listed == [*arns, other]
    shop = stack.client.list_streams(keyspaceName="shop")["streams"]
    assert [s["streamArn"] for s in shop] == arns
    one = stack.client.list_streams(keyspaceName="shop", tableName="t3")["streams"]
    assert one == [
        {
            "streamArn": arns[3],
            "keyspaceName": "shop",
            "tableName": "t3",
            "streamLabel": arns[3].rsplit("/", 1)[1],
        }
    ]


def test_list_streams_rejects_table_without_keyspace(stack: Any) -> None:
    with pytest.raises(stack.client.exceptions.ValidationException) as err:
        stack.client.list_streams(tableName="t")
    assert err.value.response["errorCode"] == "InvalidFormat"


def test_stream_arn_and_label_follow_the_creation_time(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table())
    stream = stack.client.get_stream(streamArn=arn)
    label = stream["streamLabel"]
    assert (
        arn
        == f"arn:aws:cassandra:us-east-1:123456789012:/keyspace/shop/table/events/stream/{label}"
    )
    created = stream["creationRequestDateTime"]
    assert isinstance(created, datetime.datetime)
    assert created.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] == label
    assert stream["streamStatus"] == "ENABLED"
    assert stream["streamViewType"] == "NEW_AND_OLD_IMAGES"
    assert (stream["keyspaceName"], stream["tableName"]) == ("shop", "events")
    assert len(stream["shards"]) == 4
    for shard in stream["shards"]:
        assert shard["shardId"].startswith("shardId-") and len(shard["shardId"]) >= 28
        assert shard["parentShardIds"] == []
        assert "endingSequenceNumber" not in shard["sequenceNumberRange"]


def test_two_streams_of_one_table_in_one_millisecond_get_distinct_labels(
    stack: Any, make_table: Any
) -> None:
    table = make_table()
    arns = {stack.store.enable_stream(table) for _ in range(3)}
    assert len(arns) == 3


def test_get_stream_pages_shards_with_the_sdk_paginator(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table())
    for shard_id in stack.store.open_shard_ids(arn):
        stack.control.split_shard(arn, shard_id, 3)
    paginator = stack.client.get_paginator("get_stream")
    pages = list(paginator.paginate(streamArn=arn, PaginationConfig={"PageSize": 5}))
    assert len(pages) == 4  # 4 parents + 12 children = 16 shards
    full = paginator.paginate(streamArn=arn, PaginationConfig={"PageSize": 5}).build_full_result()
    assert len(full["shards"]) == 16
    assert len({s["shardId"] for s in full["shards"]}) == 16
    assert full["streamArn"] == arn and full["streamStatus"] == "ENABLED"
    assert all(len(p["nextToken"]) >= 80 for p in pages[:-1])


def test_records_reach_the_client_for_insert_update_delete(stack: Any, make_table: Any) -> None:
    table = make_table()
    arn = stack.store.enable_stream(table)
    ch = stack.changes(table)
    stack.store.record(ch.change("a", 1, None, {"v": "x", "n": 1}))
    stack.store.record(ch.change("a", 1, {"v": "x", "n": 1}, {"v": "y", "n": 2}))
    stack.store.record(ch.change("a", 1, {"v": "y", "n": 2}, None))
    records = [r for s in stack.shards(arn) for r in stack.read_shard(arn, s["shardId"])]
    assert len(records) == 3  # one primary key: one shard, commit order
    insert, update, delete = records
    assert set(insert) >= {"newImage"} and "oldImage" not in insert
    assert insert["newImage"]["valueCells"]["v"] == {"value": {"textT": "x"}}
    assert update["oldImage"]["valueCells"]["v"] == {"value": {"textT": "x"}}
    assert update["newImage"]["valueCells"]["n"] == {"value": {"bigintT": "2"}}
    assert "newImage" not in delete and delete["oldImage"]["valueCells"]["v"]["value"] == {
        "textT": "y"
    }
    for r in records:
        assert r["partitionKeys"] == {"pk": {"textT": "a"}}
        assert r["clusteringKeys"] == {"ck": {"intT": "1"}}
        assert r["origin"] == "USER" and r["eventVersion"] == "1.1"
        assert isinstance(r["createdAt"], datetime.datetime)
    seqs = [r["sequenceNumber"] for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert all(len(s) >= 21 and s.isdigit() for s in seqs)


@pytest.mark.parametrize("view", list(ViewType))
def test_images_per_view_type_through_the_api(stack: Any, make_table: Any, view: ViewType) -> None:
    table = make_table(view_type=view)
    arn = stack.store.enable_stream(table)
    stack.store.record(stack.changes(table).change("k", 2, {"v": "old"}, {"v": "new"}))
    (record,) = [r for s in stack.shards(arn) for r in stack.read_shard(arn, s["shardId"])]
    assert stack.client.get_stream(streamArn=arn)["streamViewType"] == view.value
    wants_new = view in (ViewType.NEW_AND_OLD_IMAGES, ViewType.NEW_IMAGE)
    wants_old = view in (ViewType.NEW_AND_OLD_IMAGES, ViewType.OLD_IMAGE)
    assert ("newImage" in record) is wants_new
    assert ("oldImage" in record) is wants_old
    assert record["partitionKeys"] == {"pk": {"textT": "k"}}


def test_static_only_record_through_the_api(stack: Any, make_table: Any) -> None:
    table = make_table()
    arn = stack.store.enable_stream(table)
    change = stack.changes(table).change(
        "p", None, None, None, old_statics={"s": "a"}, new_statics={"s": "b"}
    )
    stack.store.record(change)
    (record,) = [r for s in stack.shards(arn) for r in stack.read_shard(arn, s["shardId"])]
    assert "clusteringKeys" not in record
    assert record["newImage"] == {"staticCells": {"s": {"value": {"textT": "b"}}}}
    assert record["oldImage"] == {"staticCells": {"s": {"value": {"textT": "a"}}}}


def test_every_iterator_type(make_stack: Any, make_table: Any) -> None:
    stack = make_stack(shard_count=1)
    table = make_table()
    arn = stack.store.enable_stream(table)
    ch = stack.changes(table)
    for i in range(3):
        stack.store.record(ch.change("a", i, None, {"v": str(i)}))
    (shard,) = stack.shards(arn)
    sid = shard["shardId"]
    everything = stack.read_shard(arn, sid)
    assert [r["newImage"]["valueCells"]["v"]["value"]["textT"] for r in everything] == [
        "0",
        "1",
        "2",
    ]
    second = everything[1]["sequenceNumber"]

    def read(kind: str, seq: str = "") -> list[str]:
        it = stack.iterator(arn, sid, kind, seq)
        page = stack.client.get_records(shardIterator=it, maxResults=100)
        return [r["newImage"]["valueCells"]["v"]["value"]["textT"] for r in page["changeRecords"]]

    assert read("TRIM_HORIZON") == ["0", "1", "2"]
    assert read("AT_SEQUENCE_NUMBER", second) == ["1", "2"]
    assert read("AFTER_SEQUENCE_NUMBER", second) == ["2"]
    latest = stack.iterator(arn, sid, "LATEST")
    assert stack.client.get_records(shardIterator=latest)["changeRecords"] == []
    stack.store.record(ch.change("a", 9, None, {"v": "9"}))
    page = stack.client.get_records(shardIterator=latest)
    assert [r["newImage"]["valueCells"]["v"]["value"]["textT"] for r in page["changeRecords"]] == [
        "9"
    ]


def test_sequence_number_required_only_for_at_and_after(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table())
    sid = stack.store.open_shard_ids(arn)[0]
    with pytest.raises(stack.client.exceptions.ValidationException):
        stack.client.get_shard_iterator(
            streamArn=arn, shardId=sid, shardIteratorType="AT_SEQUENCE_NUMBER"
        )
    with pytest.raises(stack.client.exceptions.ValidationException):
        stack.iterator(arn, sid, "TRIM_HORIZON", "0" * 24)


def test_at_tip_and_behind_tip(make_stack: Any, make_table: Any) -> None:
    stack = make_stack(shard_count=1)
    table = make_table()
    arn = stack.store.enable_stream(table)
    sid = stack.store.open_shard_ids(arn)[0]
    it = stack.iterator(arn, sid)
    empty = stack.client.get_records(shardIterator=it)
    assert empty["changeRecords"] == [] and empty["nextShardIterator"]
    assert empty["iteratorDescription"]["iteratorPosition"] == "AT_TIP"
    for i in range(5):
        stack.store.record(stack.changes(table).change("a", i, None, {"v": "x"}))
    first = stack.client.get_records(shardIterator=empty["nextShardIterator"], maxResults=2)
    assert len(first["changeRecords"]) == 2
    assert first["iteratorDescription"]["iteratorPosition"] == "BEHIND_TIP"
    rest = stack.client.get_records(shardIterator=first["nextShardIterator"], maxResults=10)
    assert len(rest["changeRecords"]) == 3
    assert rest["iteratorDescription"]["iteratorPosition"] == "AT_TIP"
    assert rest["nextShardIterator"]  # an open shard always has a next iterator


def test_get_records_stops_near_one_megabyte(make_stack: Any, make_table: Any) -> None:
    stack = make_stack(shard_count=1)
    table = make_table()
    arn = stack.store.enable_stream(table)
    for i in range(20):
        stack.store.record(stack.changes(table).change("a", i, None, {"v": "x" * 200_000}))
    sid = stack.store.open_shard_ids(arn)[0]
    page = stack.client.get_records(shardIterator=stack.iterator(arn, sid), maxResults=1000)
    assert 1 <= len(page["changeRecords"]) <= 6
    assert page["iteratorDescription"]["iteratorPosition"] == "BEHIND_TIP"
    assert len(stack.read_shard(arn, sid)) == 20


def test_expired_iterator(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table())
    it = stack.iterator(arn, stack.store.open_shard_ids(arn)[0])
    stack.clock.advance(899)
    fresh = stack.client.get_records(shardIterator=it)["nextShardIterator"]
    stack.clock.advance(2)
    with pytest.raises(stack.client.exceptions.ValidationException) as err:
        stack.client.get_records(shardIterator=it)
    assert err.value.response["errorCode"] == "ExpiredIterator"
    assert err.value.response["Error"]["Code"] == "ValidationException"
    # every next iterator starts its own lifetime
    assert stack.client.get_records(shardIterator=fresh)["changeRecords"] == []


def test_trimmed_data_access_after_retention(make_stack: Any, make_table: Any) -> None:
    stack = make_stack(shard_count=1, retention_s=600)
    table = make_table()
    arn = stack.store.enable_stream(table)
    ch = stack.changes(table)
    stack.store.record(ch.change("a", 1, None, {"v": "old"}))
    sid = stack.store.open_shard_ids(arn)[0]
    old_seq = stack.read_shard(arn, sid)[0]["sequenceNumber"]
    horizon = stack.iterator(arn, sid)
    stack.clock.advance(601)
    stack.store.record(ch.change("a", 2, None, {"v": "new"}))
    with pytest.raises(stack.client.exceptions.ValidationException) as err:
        stack.client.get_records(shardIterator=horizon)
    assert err.value.response["errorCode"] == "TrimmedDataAccess"
    with pytest.raises(stack.client.exceptions.ValidationException) as err:
        stack.iterator(arn, sid, "AT_SEQUENCE_NUMBER", old_seq)
    assert err.value.response["errorCode"] == "TrimmedDataAccess"
    # just after the last trimmed record nothing is lost: a checkpoint there still resumes
    after = stack.iterator(arn, sid, "AFTER_SEQUENCE_NUMBER", old_seq)
    assert len(stack.client.get_records(shardIterator=after)["changeRecords"]) == 1
    remaining = stack.read_shard(arn, sid)
    assert [r["newImage"]["valueCells"]["v"]["value"]["textT"] for r in remaining] == ["new"]


def test_unknown_stream_shard_and_bad_iterator(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table())
    missing = arn.replace("/table/events/", "/table/nope/")
    with pytest.raises(stack.client.exceptions.ResourceNotFoundException):
        stack.client.get_stream(streamArn=missing)
    with pytest.raises(stack.client.exceptions.ResourceNotFoundException):
        stack.iterator(arn, "shardId-0000000000000-doesnotexist0000")
    with pytest.raises(stack.client.exceptions.ValidationException) as err:
        stack.client.get_records(shardIterator="not-an-iterator")
    assert err.value.response["errorCode"] == "InvalidFormat"


def test_disable_then_enable_creates_a_second_stream(make_stack: Any, make_table: Any) -> None:
    stack = make_stack(retention_s=3600)
    table = make_table()
    first = stack.store.enable_stream(table)
    ch = stack.changes(table)
    stack.store.record(ch.change("a", 1, None, {"v": "one"}))
    stack.store.disable_stream("shop", "events")
    stack.store.record(ch.change("a", 1, {"v": "one"}, {"v": "lost"}))  # CDC is off: no record
    stack.clock.advance(1)
    second = stack.store.enable_stream(table)
    stack.store.record(ch.change("a", 1, {"v": "lost"}, {"v": "two"}))
    assert second != first
    listed = [s["streamArn"] for s in stack.client.list_streams(keyspaceName="shop")["streams"]]
    assert listed == [first, second]
    old = stack.client.get_stream(streamArn=first)
    assert old["streamStatus"] == "DISABLED"
    assert all("endingSequenceNumber" in s["sequenceNumberRange"] for s in old["shards"])
    old_records = [r for s in old["shards"] for r in stack.read_shard(first, s["shardId"])]
    assert [r["newImage"]["valueCells"]["v"]["value"]["textT"] for r in old_records] == ["one"]
    new_records = [r for s in stack.shards(second) for r in stack.read_shard(second, s["shardId"])]
    assert [r["newImage"]["valueCells"]["v"]["value"]["textT"] for r in new_records] == ["two"]
    stack.clock.advance(3600)
    listed = [s["streamArn"] for s in stack.client.list_streams()["streams"]]
    assert listed == [second]
    with pytest.raises(stack.client.exceptions.ResourceNotFoundException):
        stack.client.get_stream(streamArn=first)


def test_injected_faults_surface_as_boto3_exceptions(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table())
    control = stack.api.url + "/_control/faults"
    _post(control, {"throttle_rates": {"GetStream": 1.0}})
    with pytest.raises(stack.client.exceptions.ThrottlingException):
        stack.client.get_stream(streamArn=arn)
    assert stack.client.list_streams()["streams"]  # other operations unaffected
    _post(control, {"throttle_rates": {}, "internal_error_rate": 1.0})
    with pytest.raises(stack.client.exceptions.InternalServerException) as err:
        stack.client.list_streams()
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    stack.control.set_faults(internal_error_rate=0.0)
    assert stack.client.get_stream(streamArn=arn)["streamArn"] == arn


def test_fault_rate_is_a_share_of_requests(stack: Any) -> None:
    stack.control.set_faults(throttle_rate=0.5, seed=7)
    outcomes = []
    for _ in range(200):
        try:
            stack.client.list_streams()
            outcomes.append(True)
        except stack.client.exceptions.ThrottlingException:
            outcomes.append(False)
    assert 60 <= outcomes.count(False) <= 140


def test_a_third_reader_on_one_shard_is_throttled(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table())
    sid = stack.store.open_shard_ids(arn)[0]
    stack.control.set_faults(max_readers_per_shard=2, reader_window_seconds=5)
    first, second, third = (stack.iterator(arn, sid) for _ in range(3))
    first = stack.client.get_records(shardIterator=first)["nextShardIterator"]
    stack.client.get_records(shardIterator=second)
    with pytest.raises(stack.client.exceptions.ThrottlingException):
        stack.client.get_records(shardIterator=third)
    # a reader keeps its place through its own next iterators
    assert stack.client.get_records(shardIterator=first)["nextShardIterator"]
    stack.clock.advance(6)  # the others fell silent for a whole window
    assert stack.client.get_records(shardIterator=third)["changeRecords"] == []


def test_the_model_check_catches_what_botocore_would_silently_drop(check_output: Any) -> None:
    """The strict check run on every response above is itself strict."""
    good = {
        "changeRecords": [{"sequenceNumber": "0" * 24, "partitionKeys": {"k": {"intT": "1"}}}],
        "iteratorDescription": {"iteratorPosition": "AT_TIP"},
    }
    check_output("GetRecords", good)
    bad_bodies = [
        {"changeRecords": [{"sequenceNumber": "1"}]},  # shorter than 21 characters
        {"changeRecords": [{"partitionKeys": {"k": {"intT": "1", "textT": "1"}}}]},  # 2 members
        {"changeRecords": [{"createdAt": "2024-01-01"}]},  # timestamps are epoch numbers
        {"changeRecords": [], "extra": 1},  # a member the model does not have
        {"iteratorDescription": {"iteratorPosition": "SOMEWHERE"}},  # not in the enum
    ]
    for body in bad_bodies:
        with pytest.raises(AssertionError):
            check_output("GetRecords", body)
    with pytest.raises(AssertionError):
        check_output("GetStream", {"streamArn": "arn:" + "x" * 40})  # required members missing


def test_stale_and_foreign_next_tokens(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table("a"))
    stack.store.enable_stream(make_table("b"))
    token = stack.client.list_streams(maxResults=1)["nextToken"]
    with pytest.raises(stack.client.exceptions.ValidationException) as err:
        stack.client.get_stream(streamArn=arn, nextToken=token)  # a ListStreams token
    assert err.value.response["errorCode"] == "InvalidFormat"
    stack.clock.advance(901)
    with pytest.raises(stack.client.exceptions.ValidationException) as err:
        stack.client.list_streams(maxResults=1, nextToken=token)
    assert err.value.response["errorCode"] == "ExpiredNextToken"


def test_injected_expired_iterators_and_empty_pages_lose_no_record(
    make_stack: Any, make_table: Any
) -> None:
    """A reader that renews an expired iterator and keeps polling past empty pages still gets
    every record once, in order; the faults it met are counted."""
    stack = make_stack(shard_count=1)
    table = make_table()
    arn = stack.store.enable_stream(table)
    sid = stack.store.open_shard_ids(arn)[0]
    for i in range(30):
        stack.store.record(stack.changes(table).change("a", i, None, {"v": "x"}))
    faults = _post(
        stack.api.url + "/_control/faults",
        {"expired_iterator_rate": 0.3, "empty_records_rate": 0.3, "seed": 3},
    )
    assert faults["faults"]["empty_records_rate"] == 0.3
    seen: list[str] = []
    expired = empty = 0
    it = stack.iterator(arn, sid)
    while len(seen) < 30:
        try:
            page = stack.client.get_records(shardIterator=it, maxResults=4)
        except stack.client.exceptions.ValidationException as err:
            assert err.response["errorCode"] == "ExpiredIterator"
            expired += 1
            kind, after = ("AFTER_SEQUENCE_NUMBER", seen[-1]) if seen else ("TRIM_HORIZON", "")
            it = stack.iterator(arn, sid, kind, after)
            continue
        if not page["changeRecords"]:
            assert page["iteratorDescription"]["iteratorPosition"] == "BEHIND_TIP"
            empty += 1
        seen += [r["sequenceNumber"] for r in page["changeRecords"]]
        it = page["nextShardIterator"]
    assert seen == sorted(set(seen)) and len(seen) == 30
    assert expired > 0 and empty > 0
    assert stack.control.faults.injected() == {"expired_iterator": expired, "empty_records": empty}
    # At the tip there is nothing to withhold: an empty page there is no fault, and AT_TIP.
    stack.control.set_faults(expired_iterator_rate=0.0, empty_records_rate=1.0)
    assert stack.client.get_records(shardIterator=it)["iteratorDescription"] == {
        "iteratorPosition": "AT_TIP"
    }
    assert stack.control.faults.injected()["empty_records"] == empty


def test_fault_rates_outside_zero_to_one_are_refused(stack: Any) -> None:
    with pytest.raises(ValueError, match="empty_records_rate"):
        stack.control.set_faults(empty_records_rate=1.5)
    with pytest.raises(ValueError, match="expired_iterator_rate"):
        stack.control.set_faults(expired_iterator_rate=-0.1)


def test_injected_throttles_are_counted(stack: Any) -> None:
    stack.control.set_faults(throttle_rate=1.0)
    for _ in range(3):
        with pytest.raises(stack.client.exceptions.ThrottlingException):
            stack.client.list_streams()
    assert stack.control.faults.injected() == {"throttle": 3}


def test_a_client_killed_mid_request_leaves_no_traceback_and_the_server_serves_on(
    stack: Any, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer SIGKILLed while sending (a body cut short) or before reading the answer
    (a reset) is routine for a streams endpoint: no error answer, no traceback."""
    import socket
    import struct
    from urllib.parse import urlsplit

    address = urlsplit(stack.api.url)
    for body in (b'{"streamArn": "arn:aws:cassandra:us-east-1:1', b"{}"):
        with socket.create_connection((address.hostname, address.port)) as conn:
            conn.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: KeyspacesStreams.GetRecords\r\n"
                b"Content-Length: 200\r\n\r\n" + body
            )
            # Close with a reset, as the kernel does for a killed process with unread data.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert stack.client.list_streams()["streams"] == []
    assert "Traceback" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
