"""An idempotent confluent-kafka producer (acks=all) keeps producing while the test SIGKILLs and
restarts `gearbox serve`; afterwards every record whose delivery report said success is in the
topic exactly once.

usage: idempotent_crash.py BOOTSTRAP TOPIC COUNT

Writes COUNT records (key and value `r-<i>`, unique) at a steady pace, printing `acked <n>`
lines as delivery reports arrive so that the test can pick its moment to kill. Then it reads the
topic back from the beginning to the end offsets and checks, in the Jepsen style:
- every acknowledged record is present exactly once (no loss, no duplicate);
- a record whose delivery failed may be absent or present, but at most once (the idempotent
  producer retries with the same sequence number; the broker must drop the repeat);
- offsets are contiguous and nothing foreign is in the topic.
The summary counts acknowledged, failed and present records.
"""

import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from kafka_check import check, run, summary

# Pace: a record every PACE_S, so that the producing spans the test's kills.
PACE_S = 0.004
FLUSH_TIMEOUT_S = 60
READ_TIMEOUT_S = 30


def main():
    bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        # Reconnect quickly to the restarted server.
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500,
        "message.timeout.ms": 60000,
    })
    acked, failed = set(), {}

    def on_delivery(err, msg):
        key = msg.key().decode()
        if err is None:
            acked.add(key)
            if len(acked) % 100 == 0:
                print(f"acked {len(acked)}", flush=True)
        else:
            failed[key] = str(err)

    for i in range(count):
        while True:
            try:
                p.produce(topic, key=f"r-{i}", value=f"r-{i}", on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        time.sleep(PACE_S)
    left = p.flush(FLUSH_TIMEOUT_S)
    check(left == 0, f"{left} records still in flight after flush({FLUSH_TIMEOUT_S})")
    print(f"acked {len(acked)}", flush=True)

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-crash",
                  "enable.auto.commit": False, "enable.partition.eof": False})
    meta = c.list_topics(topic, timeout=10)
    parts = sorted(meta.topics[topic].partitions)
    ends = {}
    for part in parts:
        low, high = c.get_watermark_offsets(TopicPartition(topic, part), timeout=10)
        check(low == 0, f"partition {part} starts at {low}")
        ends[part] = high
    c.assign([TopicPartition(topic, part, 0) for part in parts if ends[part] > 0])
    seen = {}
    next_offset = {part: 0 for part in parts}
    deadline = time.monotonic() + READ_TIMEOUT_S
    while any(next_offset[part] < ends[part] for part in parts):
        check(time.monotonic() < deadline,
              f"read {len(seen)} records in {READ_TIMEOUT_S} s; at {next_offset}, ends {ends}")
        msg = c.poll(0.5)
        if msg is None:
            continue
        check(msg.error() is None, f"consumer error: {msg.error()}")
        part, off = msg.partition(), msg.offset()
        check(off == next_offset[part], f"partition {part}: offset {off} after {next_offset[part]}")
        next_offset[part] = off + 1
        key = msg.key().decode()
        check(msg.value().decode() == key, f"{part}@{off}: value {msg.value()} under key {key}")
        check(key not in seen, f"{key} is in the topic twice: at {seen.get(key)} and {(part, off)}")
        seen[key] = (part, off)
    c.close()

    ours = {f"r-{i}" for i in range(count)}
    check(set(seen) <= ours, f"foreign records: {sorted(set(seen) - ours)[:5]}")
    lost = sorted(acked - set(seen))
    check(not lost, f"{len(lost)} acknowledged records are missing, e.g. {lost[:5]}")
    check(acked | set(failed) == ours,
          f"{len(ours - acked - set(failed))} records got no delivery report")
    summary(records=count, acked=len(acked), failed=len(failed),
            failed_present=len(set(failed) & set(seen)), present=len(seen),
            errors=sorted(set(failed.values()))[:3])


if __name__ == "__main__":
    run(main, 110)
