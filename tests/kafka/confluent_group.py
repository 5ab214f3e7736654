"""confluent-kafka (librdkafka) against `gearbox serve --kafka`: topic creation, an idempotent
producer, a consumer group that grows to three members and shrinks to two, synchronous commits
read back with committed(), and seeking by timestamp.

usage: confluent_group.py BOOTSTRAP TOPIC GROUP

Phases, each over its own batch of keyed records, produced once the group settled, so that
every record has one owner:
1. AdminClient creates TOPIC with 3 partitions.
2. Members m1 and m2 join GROUP; once their assignment is settled (disjoint, covering all three
   partitions, nobody empty) an idempotent producer (acks=all) writes batch A, and they read it:
   every record exactly once, by the member that owns its partition. Each commits
   synchronously; committed() returns the commit.
3. m3 joins: the group settles on one partition each; batch B is read the same way and committed.
4. m1 leaves (close()): the two left settle on all three partitions; batch C, likewise.
5. offsets_for_times finds, for a time inside batch C, the first record at or after it in each
   partition; a consumer assign()s there and reads exactly that record first, then seek()s back
   and reads it again.

Summary: records per batch, the final committed offsets per partition (the Rust test compares
them with the group's cursor subscription over HTTP), and the member count per phase.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_check import check, run, summary, wait_for

PARTITIONS = 3
BATCH_RECORDS = 90
# Record i of the test gets the CreateTime T0 + i * TIME_STEP_MS, so times are unique and
# increase in every partition, and offsets_for_times has one right answer.
TIME_STEP_MS = 1000
SETTLE_TIMEOUT_S = 20
READ_TIMEOUT_S = 15
# An assignment counts as settled when it held unchanged for this long.
SETTLED_FOR_S = 1.0


def produce(bootstrap, topic, first, count, t0):
    """Writes records first..first+count with an idempotent producer; returns
    {(partition, offset): (key, value, timestamp)}."""
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    delivered = {}
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(f"{msg.key()}: {err}")
        else:
            delivered[(msg.partition(), msg.offset())] = (
                msg.key().decode(),
                msg.value().decode(),
                msg.timestamp()[1],
            )

    for i in range(first, first + count):
        p.produce(
            topic,
            key=f"key-{i}",
            value=f"value-{i}",
            timestamp=t0 + i * TIME_STEP_MS,
            on_delivery=on_delivery,
        )
        p.poll(0)
    left = p.flush(30)
    check(left == 0, f"{left} records still undelivered after flush(30)")
    check(not errors, f"delivery errors: {errors[:5]}")
    check(len(delivered) == count, f"{len(delivered)} distinct positions for {count} records")
    return delivered


def member(bootstrap, group, topic, name):
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "enable.partition.eof": False,
        }
    )
    c.subscribe([topic])
    return c


def transient(name, msg, what):
    """Whether `msg` is a non-fatal error event (logged and skipped); a fatal one fails."""
    if msg.error() is None:
        return False
    check(not msg.error().fatal(), f"{name} fatal error ({what}): {msg.error()}")
    print(f"{name} ({what}): {msg.error()}", file=sys.stderr, flush=True)
    return True


def assignment(c):
    return sorted(tp.partition for tp in c.assignment())


def settle(members, what):
    """Polls every member in turn until their assignments are disjoint, cover every partition,
    leave nobody empty, and held for SETTLED_FOR_S. A record polled meanwhile is a failure: the
    batch under test is produced only after the group settled."""
    state = {"last": None, "since": time.monotonic()}

    def step():
        for name, c in members.items():
            msg = c.poll(0.1)
            if msg is not None and not transient(name, msg, what):
                check(False, f"{name} got {msg.partition()}@{msg.offset()} while the group "
                             f"settled ({what})")
        now = {name: assignment(c) for name, c in members.items()}
        if now != state["last"]:
            state["last"], state["since"] = now, time.monotonic()

    def settled():
        now = state["last"]
        owned = [p for ps in now.values() for p in ps]
        return (
            sorted(owned) == list(range(PARTITIONS))
            and all(now.values())
            and time.monotonic() - state["since"] >= SETTLED_FOR_S
        )

    wait_for(f"the group to settle ({what}); last assignments: {state}", settled,
             SETTLE_TIMEOUT_S, step)
    return state["last"]


def read_batch(members, owners, batch, what):
    """Polls every member in turn until every record of `batch` came; checks each came once,
    from its partition's owner. Then commits each member synchronously and checks committed()."""
    got = {}

    def step():
        for name, c in members.items():
            msg = c.poll(0.1)
            if msg is None or transient(name, msg, what):
                continue
            pos = (msg.partition(), msg.offset())
            check(pos in batch, f"{name} got {pos} ({msg.key()}), not in the batch ({what})")
            check(pos not in got, f"{pos} delivered twice: to {got.get(pos)} and {name} ({what})")
            check(owners[msg.partition()] == name,
                  f"{name} got {pos} but partition {msg.partition()} is "
                  f"{owners[msg.partition()]}'s ({what})")
            key, value, _ = batch[pos]
            check((msg.key().decode(), msg.value().decode()) == (key, value),
                  f"{pos} is {msg.key()}={msg.value()}, produced as {key}={value}")
            got[pos] = name

    wait_for(f"every record of the batch ({what}): {len(batch) - len(got)} missing",
             lambda: len(got) == len(batch), READ_TIMEOUT_S, step)
    committed = {}
    for name, c in members.items():
        try:
            c.commit(asynchronous=False)
        except KafkaException as e:
            check(False, f"{name} commit(asynchronous=False) failed ({what}): {e}")
        mine = [TopicPartition(tp.topic, tp.partition) for tp in c.assignment()]
        for tp in c.committed(mine, timeout=10):
            check(tp.error is None, f"{name} committed() error on {tp.partition}: {tp.error}")
            want = max(o for (p, o) in batch if p == tp.partition) + 1
            check(tp.offset == want,
                  f"{name} committed() on partition {tp.partition} is {tp.offset}, "
                  f"committed {want} ({what})")
            committed[tp.partition] = tp.offset
    return committed


def seek_by_time(bootstrap, topic, batch, t):
    """offsets_for_times(t) then assign()/seek(): the first record read is the first one at or
    after t in its partition."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-seek",
                  "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        asked = [TopicPartition(topic, p, t) for p in range(PARTITIONS)]
        found = c.offsets_for_times(asked, timeout=10)
        want = {}
        for p in range(PARTITIONS):
            later = sorted(o for (q, o), (_, _, ts) in batch.items() if q == p and ts >= t)
            want[p] = later[0] if later else None
        got = {}
        for tp in found:
            check(tp.error is None, f"offsets_for_times error on {tp.partition}: {tp.error}")
            got[tp.partition] = tp.offset
        for p in range(PARTITIONS):
            if want[p] is not None:
                check(got[p] == want[p],
                      f"offsets_for_times({t}) on partition {p} is {got[p]}, want {want[p]}")
        targets = [TopicPartition(topic, p, got[p]) for p in range(PARTITIONS) if want[p] is not None]
        check(targets, "no partition has a record after the seek time")
        c.assign(targets)
        firsts = {}

        def step():
            msg = c.poll(0.2)
            if msg is not None:
                check(msg.error() is None, f"poll error after assign: {msg.error()}")
                firsts.setdefault(msg.partition(), msg.offset())

        wait_for("the first record of every seeked partition",
                 lambda: len(firsts) == len(targets), READ_TIMEOUT_S, step)
        for tp in targets:
            check(firsts[tp.partition] == tp.offset,
                  f"after assign at {tp.offset}, partition {tp.partition} started at "
                  f"{firsts[tp.partition]}")
        # seek() back on one partition: the same record comes again.
        tp = targets[0]
        c.seek(TopicPartition(topic, tp.partition, tp.offset))
        again = []

        def step2():
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None and msg.partition() == tp.partition:
                again.append(msg.offset())

        wait_for("the record after seek()", lambda: again, READ_TIMEOUT_S, step2)
        check(again[0] == tp.offset, f"after seek to {tp.offset} the first record is {again[0]}")
        return {p: got[p] for p in range(PARTITIONS)}
    finally:
        c.close()


def main():
    bootstrap, topic, group = sys.argv[1:4]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    futures[topic].result(15)
    meta = admin.list_topics(topic, timeout=10)
    check(len(meta.topics[topic].partitions) == PARTITIONS,
          f"{topic} has {len(meta.topics[topic].partitions)} partitions after CreateTopics")

    t0 = int(time.time() * 1000) - 3 * BATCH_RECORDS * TIME_STEP_MS
    members = {"m1": member(bootstrap, group, topic, "m1"),
               "m2": member(bootstrap, group, topic, "m2")}
    phases = []
    try:
        owners = settle(members, "two members")
        phases.append(owners)
        batch_a = produce(bootstrap, topic, 0, BATCH_RECORDS, t0)
        for p in range(PARTITIONS):
            check(any(q == p for q, _ in batch_a), f"no record of batch A went to partition {p}")
        read_batch(members, {p: n for n, ps in owners.items() for p in ps}, batch_a, "batch A")

        members["m3"] = member(bootstrap, group, topic, "m3")
        owners = settle(members, "m3 joined")
        check(all(len(ps) == 1 for ps in owners.values()),
              f"three members, three partitions, yet {owners}")
        phases.append(owners)
        batch_b = produce(bootstrap, topic, BATCH_RECORDS, BATCH_RECORDS, t0)
        read_batch(members, {p: n for n, ps in owners.items() for p in ps}, batch_b, "batch B")

        members.pop("m1").close()
        owners = settle(members, "m1 left")
        phases.append(owners)
        batch_c = produce(bootstrap, topic, 2 * BATCH_RECORDS, BATCH_RECORDS, t0)
        committed = read_batch(members, {p: n for n, ps in owners.items() for p in ps},
                               batch_c, "batch C")
    finally:
        for c in members.values():
            c.close()

    # A time inside batch C: the middle record's CreateTime.
    t = t0 + (2 * BATCH_RECORDS + BATCH_RECORDS // 2) * TIME_STEP_MS
    seek = seek_by_time(bootstrap, topic, batch_c, t)
    summary(
        records=3 * BATCH_RECORDS,
        assignments=phases,
        committed={str(p): o for p, o in sorted(committed.items())},
        seek_offsets={str(p): o for p, o in sorted(seek.items())},
    )


if __name__ == "__main__":
    run(main, 60)
