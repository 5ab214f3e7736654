"""kafka-python against `gearbox serve --kafka`: a KafkaProducer whose every future succeeds,
then a KafkaConsumer that subscribe()s in a group, receives every record once, and commits.

usage: kafka_python_group.py BOOTSTRAP TOPIC GROUP COUNT

The topic is auto-created by the producer's Metadata request. After the commit, the committed
offsets equal the end offsets, and a second member of the group starts there.
"""

import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from kafka_check import check, run, summary

CONSUMER_TIMEOUT_MS = 8000
JOIN_TIMEOUT_S = 20


def consumer(bootstrap, topic, group):
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=CONSUMER_TIMEOUT_MS,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    c.subscribe([topic])
    return c


def main():
    bootstrap, topic, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    futures = [p.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(count)]
    p.flush(timeout=30)
    produced = {}
    for i, f in enumerate(futures):
        check(f.succeeded(), f"send {i} did not succeed: {f.exception}")
        md = f.get(timeout=0)
        produced[(md.partition, md.offset)] = (f"k{i}", f"v{i}")
    p.close()
    check(len(produced) == count, f"{len(produced)} distinct positions for {count} sends")

    c = consumer(bootstrap, topic, group)
    got = {}
    for msg in c:
        pos = (msg.partition, msg.offset)
        check(pos not in got, f"{pos} received twice")
        got[pos] = (msg.key.decode(), msg.value.decode())
        if len(got) == count:
            break
    check(got == produced,
          f"received {len(got)} records, produced {count}; missing "
          f"{sorted(set(produced) - set(got))[:5]}, unexpected {sorted(set(got) - set(produced))[:5]}")
    c.commit()
    parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
    ends = c.end_offsets(parts)
    committed = {tp.partition: c.committed(tp) for tp in parts}
    for tp in parts:
        check(committed[tp.partition] == ends[tp],
              f"committed on {tp.partition} is {committed[tp.partition]}, end is {ends[tp]}")
    c.close()

    # A new member of the same group starts at the commit: once it has its partitions, its
    # position is the end and nothing is left to read.
    again = consumer(bootstrap, topic, group)
    left = []
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while set(again.assignment()) != set(parts):
        check(time.monotonic() < deadline, f"the second member got no assignment in {JOIN_TIMEOUT_S} s")
        for records in again.poll(timeout_ms=200).values():
            left.extend((m.partition, m.offset) for m in records)
    for records in again.poll(timeout_ms=1000).values():
        left.extend((m.partition, m.offset) for m in records)
    positions = {tp.partition: again.position(tp) for tp in parts}
    again.close()
    check(not left, f"after the commit, the group read again {left[:5]}")
    check(all(positions[tp.partition] == ends[tp] for tp in parts),
          f"the second member starts at {positions}, the ends are {ends}")
    summary(records=count, committed={str(p): o for p, o in sorted(committed.items())})


if __name__ == "__main__":
    run(main, 45)
