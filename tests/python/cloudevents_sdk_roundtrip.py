#!/usr/bin/env python3
"""A real client against `gearbox serve`: the Python CloudEvents SDK from PyPI.

Usage: cloudevents_sdk_roundtrip.py URL TOPIC

Builds events with the SDK (`cloudevents.core`): JSON data, text data and binary data, with
the optional attributes and extensions set, and one with only the SDK's defaults. It sends
each one twice, once in HTTP structured mode and once in HTTP binary mode, both made by the
SDK's own HTTP binding, to `POST URL/v1/topics/TOPIC/events`. Then it reads each back with
`GET URL/v1/topics/TOPIC/partitions/P/events?offset=O&max=1`, parses the structured JSON
event Gearbox returns with the SDK's JSON format, and checks it equals the event sent.

Equality is the CloudEvents notion: the same context attributes with the same values (`time`
as an instant; extensions are strings, as the HTTP binding carries them) and the same data
(a JSON value for JSON content types, a string for text, bytes for binary data).

The topic must exist. Exits 1 with a message on any failure, and prints a summary line.
"""

from __future__ import annotations

import http.client
import json
import sys
import urllib.parse
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import cloudevents
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

SOURCE = "/gearbox/tests/python-sdk"
FORMAT = JSONFormat()


class Failure(Exception):
    """A check failed; the message says what was expected and what came back."""


def json_event(event_id: str) -> CloudEvent:
    return CloudEvent(
        {
            "id": event_id,
            "source": SOURCE,
            "type": "com.example.order.created",
            "datacontenttype": "application/json",
            "dataschema": "https://example.com/schemas/order-v2.json",
            "subject": "orders/42",
            "time": datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1))),
            "partitionkey": "customer-7",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "correlationid": "corr-0001",
        },
        {
            "order": 42,
            "total": 19.99,
            "paid": True,
            "coupon": None,
            "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
            "note": "café ✓ \"quoted\" \\ back",
        },
    )


def text_event(event_id: str) -> CloudEvent:
    return CloudEvent(
        {
            "id": event_id,
            "source": SOURCE,
            "type": "com.example.note.added",
            "datacontenttype": "text/plain; charset=utf-8",
            # Spaces, a percent sign, a double quote and non-ASCII: the HTTP binding
            # percent-encodes these in binary mode headers.
            "subject": "room 3 / café \"north\" 100%",
            "time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
            "partitionkey": "customer-7",
            "correlationid": "corr 0002 — ünïcode, 50% off",
        },
        "Hello, Gearbox!\nSecond line: ünïcode ✓, tabs\tand \"quotes\".",
    )


def binary_event(event_id: str) -> CloudEvent:
    return CloudEvent(
        {
            "id": event_id,
            "source": SOURCE,
            "type": "com.example.blob.stored",
            "datacontenttype": "application/octet-stream",
            "dataschema": "urn:example:blob",
            "subject": "blobs/7",
            "time": datetime(
                2025, 12, 31, 23, 59, 59, 999000, tzinfo=timezone(-timedelta(hours=5, minutes=30))
            ),
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "correlationid": "corr-0003",
        },
        bytes(range(256)) + b"\x00\xff not UTF-8: \xc3\x28",
    )


def minimal_event(event_id: str) -> CloudEvent:
    # The SDK's defaults: no datacontenttype (so JSON), `time` set to now (microseconds, UTC),
    # no subject, dataschema or extensions.
    return CloudEvent(
        {"id": event_id, "source": SOURCE, "type": "com.example.ping"},
        {"ping": "pong", "n": [1, 2.5, -3]},
    )


EVENTS: list[tuple[str, Callable[[str], CloudEvent]]] = [
    ("json", json_event),
    ("text", text_event),
    ("binary", binary_event),
    ("minimal", minimal_event),
]

MODES: dict[str, Callable[[CloudEvent, JSONFormat], ce_http.HTTPMessage]] = {
    "structured": ce_http.to_structured,
    "binary": ce_http.to_binary,
}


def request(
    url: str, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, Any]:
    # http.client sends exactly the headers given (urllib would add a form Content-Type to a
    # POST without one, which in binary mode would become the event's datacontenttype).
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = raw.decode("utf-8", "replace")
    return resp.status, payload


def send(url: str, topic: str, name: str, mode: str, event: CloudEvent) -> tuple[int, int]:
    message = MODES[mode](event, FORMAT)
    path = f"/v1/topics/{urllib.parse.quote(topic, safe='')}/events"
    status, reply = request(url, "POST", path, dict(message.headers), message.body)
    what = f"{name} event in {mode} mode (id {event.get_id()})"
    if status != 201:
        raise Failure(
            f"POST {path} with the {what}: expected 201, got {status}: {reply}\n"
            f"  request headers: {message.headers}\n  request body: {message.body!r}"
        )
    results = reply.get("results") if isinstance(reply, dict) else None
    if not isinstance(results, list) or len(results) != 1:
        raise Failure(f"POST {path} with the {what}: expected one result, got {reply}")
    result = results[0]
    if result.get("id") != event.get_id() or result.get("duplicate") is not False:
        raise Failure(f"POST {path} with the {what}: unexpected result {result}")
    return result["partition"], result["offset"]


def read_back(
    url: str, topic: str, partition: int, offset: int
) -> tuple[dict[str, Any], CloudEvent]:
    topic_path = f"/v1/topics/{urllib.parse.quote(topic, safe='')}"
    path = f"{topic_path}/partitions/{partition}/events?offset={offset}&max=1"
    status, reply = request(url, "GET", path, {"accept": "application/json"}, None)
    if status != 200:
        raise Failure(f"GET {path}: expected 200, got {status}: {reply}")
    events = reply.get("events") if isinstance(reply, dict) else None
    if not isinstance(events, list) or len(events) != 1:
        raise Failure(f"GET {path}: expected one event, got {reply}")
    item = events[0]
    if item.get("partition") != partition or item.get("offset") != offset:
        raise Failure(f"GET {path}: expected partition {partition} offset {offset}, got {item}")
    raw = item["event"]
    # The reply carries each event in the structured JSON format: parse it as the SDK parses
    # an `application/cloudevents+json` HTTP message.
    message = ce_http.HTTPMessage(
        headers={"content-type": FORMAT.get_content_type()},
        body=json.dumps(raw).encode("utf-8"),
    )
    return raw, ce_http.from_structured(message, FORMAT, CloudEvent)


def differences(sent: CloudEvent, got: CloudEvent) -> list[str]:
    diffs = []
    want_attrs, got_attrs = sent.get_attributes(), got.get_attributes()
    for name in sorted(set(want_attrs) | set(got_attrs)):
        want, have = want_attrs.get(name), got_attrs.get(name)
        # `==` on aware datetimes compares instants; on strings and None, values and types.
        if type(want) is not type(have) or want != have:
            diffs.append(f"attribute {name}: sent {want!r}, read back {have!r}")
    want_data, got_data = sent.get_data(), got.get_data()
    if type(want_data) is not type(got_data) or want_data != got_data:
        diffs.append(f"data: sent {want_data!r}, read back {got_data!r}")
    return diffs


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    url, topic = argv[1].rstrip("/"), argv[2]
    run = uuid.uuid4().hex[:12]
    sent: list[tuple[str, str, CloudEvent, int, int]] = []
    counts = {mode: 0 for mode in MODES}
    for mode in MODES:
        for name, make in EVENTS:
            # Gearbox deduplicates on source + id, so every send has its own id.
            event = make(f"{name}-{mode}-{run}")
            partition, offset = send(url, topic, name, mode, event)
            sent.append((name, mode, event, partition, offset))
            counts[mode] += 1

    failures = []
    for name, mode, event, partition, offset in sent:
        raw, got = read_back(url, topic, partition, offset)
        diffs = differences(event, got)
        if diffs:
            failures.append(
                f"{name} event sent in {mode} mode (id {event.get_id()}, partition {partition}, "
                f"offset {offset}) read back different:\n    "
                + "\n    ".join(diffs)
                + f"\n    Gearbox returned: {json.dumps(raw, ensure_ascii=False)}"
            )

    # Placement: events with the same partitionkey share a partition.
    by_key: dict[str, set[int]] = {}
    for _, _, event, partition, _ in sent:
        key = event.get_extension("partitionkey")
        if key is not None:
            by_key.setdefault(key, set()).add(partition)
    for key, partitions in by_key.items():
        if len(partitions) != 1:
            failures.append(
                f"events with partitionkey {key!r} landed in partitions {sorted(partitions)}"
            )

    total = len(sent)
    equal = total - sum(1 for f in failures if " read back different:" in f)
    summary = (
        f"python cloudevents SDK {cloudevents.__version__}: {total} events sent "
        f"({counts['structured']} structured, {counts['binary']} binary), {equal} read back equal"
    )
    if failures:
        print("FAILED: " + summary, file=sys.stderr)
        for failure in failures:
            print("  - " + failure, file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Failure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
