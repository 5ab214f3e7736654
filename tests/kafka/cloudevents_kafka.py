"""CloudEvents across HTTP and Kafka on one `gearbox serve`, through confluent-kafka.

usage: cloudevents_kafka.py HTTP_URL BOOTSTRAP TOPIC

1. An event POSTed over HTTP in structured mode reads from Kafka as a binary-mode CloudEvents
   Kafka record: `ce_specversion`, `ce_id`, `ce_source`, `ce_type` headers, `content-type`
   from `datacontenttype`, the data as the value, `partitionkey` as the key.
2. A record produced with `ce_*` headers reads over HTTP (GET .../partitions/P/events) as that
   event: same id, source, type, data and extension; and the same source and id POSTed over
   HTTP afterwards is a duplicate of that record.
3. A plain record (no `ce_*` headers) reads over HTTP with the documented mapping: id
   `<topic>-<p>-<offset>`, source `/gearbox/topics/<topic>/partitions/<p>`, type
   `kafka.record`, time the record timestamp, partitionkey the key, data the value (JSON
   values as JSON; a value that is not JSON and has no content-type as `data_base64`).
The topic must exist (the Rust test creates it over HTTP).
"""

import base64
import json
import sys
import urllib.request
from datetime import datetime, timezone

from confluent_kafka import Consumer, Producer, TopicPartition

from kafka_check import check, run, summary

READ_TIMEOUT_S = 15


def http(method, url, body=None, content_type=None):
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read() or b"null")


def read_record(bootstrap, topic, partition, offset):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-ce",
                  "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        msg = c.poll(READ_TIMEOUT_S)
        check(msg is not None, f"no record at {topic}/{partition}@{offset} within {READ_TIMEOUT_S} s")
        check(msg.error() is None, f"consumer error: {msg.error()}")
        check(msg.offset() == offset, f"asked for offset {offset}, got {msg.offset()}")
        return msg
    finally:
        c.close()


def produce(bootstrap, topic, key, value, headers):
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    out = {}

    def on_delivery(err, msg):
        out["err"] = err
        if err is None:
            out["pos"] = (msg.partition(), msg.offset(), msg.timestamp()[1])

    p.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
    check(p.flush(15) == 0, "the record was not delivered within 15 s")
    check(out.get("err") is None, f"delivery failed: {out.get('err')}")
    return out["pos"]


def http_event(base, topic, partition, offset):
    status, body = http("GET", f"{base}/v1/topics/{topic}/partitions/{partition}/events"
                                f"?offset={offset}&max=1")
    check(status == 200, f"GET events: {status} {body}")
    check(len(body["events"]) == 1 and body["events"][0]["offset"] == offset,
          f"GET events at {offset}: {body}")
    return body["events"][0]["event"]


def http_to_kafka(base, bootstrap, topic):
    event = {
        "specversion": "1.0",
        "id": "from-http-1",
        "source": "/matrix/http",
        "type": "com.example.http.created",
        "datacontenttype": "application/json",
        "partitionkey": "customer-7",
        "data": {"order": 1, "items": ["a", "b"]},
    }
    status, body = http("POST", f"{base}/v1/topics/{topic}/events",
                        json.dumps(event).encode(), "application/cloudevents+json")
    check(status == 201, f"POST structured event: {status} {body}")
    placed = body["results"][0]
    msg = read_record(bootstrap, topic, placed["partition"], placed["offset"])
    headers = {k: v.decode() for k, v in (msg.headers() or [])}
    want = {
        "ce_specversion": "1.0",
        "ce_id": event["id"],
        "ce_source": event["source"],
        "ce_type": event["type"],
        "content-type": "application/json",
    }
    for k, v in want.items():
        check(headers.get(k) == v, f"header {k} is {headers.get(k)!r}, want {v!r}; all: {headers}")
    check(json.loads(msg.value()) == event["data"], f"value {msg.value()!r} is not the data")
    check(msg.key() == b"customer-7", f"key {msg.key()!r} is not the partitionkey")


def kafka_to_http(base, bootstrap, topic):
    data = {"order": 2, "status": "shipped"}
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"from-kafka-1"),
        ("ce_source", b"/matrix/kafka"),
        ("ce_type", b"com.example.kafka.shipped"),
        ("ce_traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("content-type", b"application/json"),
    ]
    p, o, _ = produce(bootstrap, topic, b"customer-8", json.dumps(data).encode(), headers)
    e = http_event(base, topic, p, o)
    want = {
        "specversion": "1.0",
        "id": "from-kafka-1",
        "source": "/matrix/kafka",
        "type": "com.example.kafka.shipped",
        "datacontenttype": "application/json",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "partitionkey": "customer-8",
        "data": data,
    }
    for k, v in want.items():
        check(e.get(k) == v, f"event attribute {k} is {e.get(k)!r}, want {v!r}; event: {e}")
    # The record entered the deduplication window: the same source and id over HTTP is a
    # duplicate of it.
    again = {k: v for k, v in want.items() if k != "traceparent"}
    status, body = http("POST", f"{base}/v1/topics/{topic}/events",
                        json.dumps(again).encode(), "application/cloudevents+json")
    check(status == 201, f"POST of the same event over HTTP: {status} {body}")
    check(body["results"][0] == {"id": "from-kafka-1", "partition": p, "offset": o,
                                 "duplicate": True},
          f"the same source and id over HTTP is not a duplicate of {p}@{o}: {body}")


def plain_to_http(base, bootstrap, topic):
    checked = 0
    for key, value, rendered in [
        (b"plain-key", b'{"plain": true}', ("data", {"plain": True})),
        (b"bytes-key", b"\x00\x01not json",
         ("data_base64", base64.b64encode(b"\x00\x01not json").decode())),
    ]:
        p, o, ts = produce(bootstrap, topic, key, value, None)
        e = http_event(base, topic, p, o)
        when = datetime.fromtimestamp(ts / 1000, tz=timezone.utc)
        want = {
            "specversion": "1.0",
            "id": f"{topic}-{p}-{o}",
            "source": f"/gearbox/topics/{topic}/partitions/{p}",
            "type": "kafka.record",
            "partitionkey": key.decode(),
            rendered[0]: rendered[1],
        }
        for k, v in want.items():
            check(e.get(k) == v, f"plain record: {k} is {e.get(k)!r}, want {v!r}; event: {e}")
        got_time = datetime.fromisoformat(e["time"].replace("Z", "+00:00"))
        check(got_time == when, f"plain record: time {e['time']} is not the timestamp {ts}")
        checked += 1
    return checked


def main():
    base, bootstrap, topic = sys.argv[1:4]
    http_to_kafka(base, bootstrap, topic)
    kafka_to_http(base, bootstrap, topic)
    plain = plain_to_http(base, bootstrap, topic)
    summary(http_to_kafka=1, kafka_to_http=1, plain_records=plain)


if __name__ == "__main__":
    run(main, 45)
