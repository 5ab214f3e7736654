#!/usr/bin/env python3
"""Confluent's serializers against Gearbox: the schema registry and the Kafka listener together.

Usage: kafka_schema_serializers.py BOOTSTRAP REGISTRY_URL HTTP_URL TOPIC

A confluent-kafka Producer with an AvroSerializer (auto-registering under `<topic>-value`, the
serializer's default subject name, on Gearbox's `/registry`) writes records in the Confluent
wire format to a topic whose schemas are enforced. Then:

- every serialized record is acknowledged, and an AvroDeserializer reads them back equal;
- a value with the right schema id but a payload that is not a datum of the schema is refused
  with INVALID_RECORD, and so is a plain (unframed) value, and nothing of either is stored;
- a value framed with a schema id that is not registered is refused.

Prints `ok <check>` per check and a final `every check passed`; exits 1 at the first failure.
"""

from __future__ import annotations

import json
import struct
import sys
import time
import urllib.request

from confluent_kafka import KafkaError, Producer, Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

SCHEMA = json.dumps(
    {
        "type": "record",
        "name": "StockLevel",
        "fields": [
            {"name": "sku", "type": "string"},
            {"name": "store", "type": "string"},
            {"name": "qty", "type": "long"},
        ],
    }
)


def fail(message: str) -> None:
    print(f"FAIL {message}", flush=True)
    sys.exit(1)


def http(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def produce_one(p: Producer, topic: str, value: bytes) -> KafkaError | None:
    outcome: list = []
    p.produce(topic, value=value, on_delivery=lambda err, msg: outcome.append(err))
    p.flush(15)
    if not outcome:
        fail("no delivery report within 15 s")
    return outcome[0]


def high_watermark(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "hw-probe"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        c.close()


def main() -> None:
    bootstrap, registry_url, http_url, topic = sys.argv[1:5]
    # The topic exists and enforces its schemas before anything is produced.
    http("POST", f"{http_url}/v1/topics", {"name": topic, "partitions": 1})
    http("PUT", f"{http_url}/v1/topics/{topic}/schema-policy", {"require_schema": True})

    registry = SchemaRegistryClient({"url": registry_url})
    serializer = AvroSerializer(registry, SCHEMA)
    ctx = SerializationContext(topic, MessageField.VALUE)
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})

    rows = [{"sku": f"sku-{i}", "store": "s1", "qty": i * 3} for i in range(50)]
    errors: list = []
    for row in rows:
        p.produce(topic, value=serializer(row, ctx), on_delivery=lambda err, msg: err and errors.append(err))
    if p.flush(20) != 0 or errors:
        fail(f"serialized records were not all acknowledged: {errors[:3]}")
    print("ok AvroSerializer records are acknowledged", flush=True)

    registered = registry.get_latest_version(f"{topic}-value")
    schema_id = registered.schema_id
    print(f"ok the serializer registered {topic}-value (id {schema_id})", flush=True)

    deserializer = AvroDeserializer(registry, SCHEMA)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader", "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, 0, 0)])
    got: list = []
    deadline = time.time() + 20
    while len(got) < len(rows) and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        got.append(deserializer(m.value(), ctx))
    c.close()
    if got != rows:
        fail(f"read back {len(got)} records, not the {len(rows)} written (first: {got[:1]})")
    print("ok AvroDeserializer reads every record back equal", flush=True)

    before = high_watermark(bootstrap, topic)
    # Refusals go through a plain producer: an idempotent one treats a refused batch's sequence
    # numbers as spent.
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0})
    # A string field whose length says 100 bytes, with 2 bytes after it.
    bad_payload = b"\x00" + struct.pack(">I", schema_id) + b"\xc8\x01ab"
    err = produce_one(p, topic, bad_payload)
    if err is None or err.code() != KafkaError.INVALID_RECORD:
        fail(f"a framed value that is not a datum of its schema: {err}")
    print("ok a framed value that is not a datum of its schema is INVALID_RECORD", flush=True)

    err = produce_one(p, topic, json.dumps(rows[0]).encode())
    if err is None or err.code() != KafkaError.INVALID_RECORD:
        fail(f"a plain value on an enforced topic: {err}")
    print("ok a plain value on an enforced topic is INVALID_RECORD", flush=True)

    err = produce_one(p, topic, b"\x00" + struct.pack(">I", 999_999) + b"\x02")
    if err is None or err.code() != KafkaError.INVALID_RECORD:
        fail(f"an unregistered schema id: {err}")
    print("ok an unregistered schema id is INVALID_RECORD", flush=True)

    after = high_watermark(bootstrap, topic)
    if after != before:
        fail(f"refused records were stored: the high watermark moved from {before} to {after}")
    print("ok nothing refused was stored", flush=True)
    print("every check passed", flush=True)


if __name__ == "__main__":
    main()
