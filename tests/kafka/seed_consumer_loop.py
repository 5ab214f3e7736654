"""The consumer loop of seed 003 ("Event-Driven Architecture for Data Engineers", Consumer
Groups and Parallelism) run against `gearbox serve --kafka`, with only its settings pointed at
the test's server, topic and group.

usage: seed_consumer_loop.py produce BOOTSTRAP TOPIC COUNT
       seed_consumer_loop.py consume BOOTSTRAP TOPIC GROUP STOP_AFTER

`produce` writes COUNT CloudEvents-shaped JSON records (ids evt-0...) with the seed's envelope.

`consume` runs the seed's loop. The seed leaves `process_event` to the reader; here it records
the event's id and, after processing the STOP_AFTER-th event of this run, raises Stop: the
process dies between processing an event and committing it, the worst moment for the loop. The
loop's guarantee is then: every event committed before is never processed again, and the one
event processed but not committed is processed again by the next run. The summary lists the ids
processed by this run, in order; the Rust test checks the guarantee across two runs.
"""

import json
import sys

from confluent_kafka import Consumer, KafkaError, Producer

from kafka_check import check, run, summary


class Stop(Exception):
    """The simulated crash after processing an event."""


def produce(bootstrap, topic, count):
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    errors = []
    for i in range(count):
        event = {
            "id": f"evt-{i}",
            "specversion": "1.0",
            "type": "com.company.orders.created",
            "source": "/orders-service/v2",
            "time": "2026-03-27T14:30:00Z",
            "data": {"order_id": f"ord_{i}", "amount_cents": 4999, "currency": "USD"},
        }
        p.produce(topic, key=f"ord_{i}", value=json.dumps(event),
                  on_delivery=lambda err, _msg: err and errors.append(str(err)))
    left = p.flush(30)
    check(left == 0 and not errors, f"produce: {left} undelivered, errors {errors[:3]}")
    summary(produced=count)


def consume(bootstrap, topic, group, stop_after):
    processed = []

    def process_event(event):
        processed.append(event["id"])
        if len(processed) == stop_after:
            raise Stop()

    # From here to the end of the function: the seed's loop as written, with its settings
    # pointed at the test's server ("kafka-broker:9092"), group and topic ("order-events").
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,  # Version in group ID for clean restarts
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,  # Manual commit for at-least-once guarantee
        "max.poll.interval.ms": 300000,  # 5 min max processing time per batch
    })

    consumer.subscribe([topic])

    try:
        while True:
            msg = consumer.poll(timeout=1.0)

            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise Exception(f"Consumer error: {msg.error()}")

            event = json.loads(msg.value().decode("utf-8"))
            process_event(event)

            # Commit only after successful processing
            consumer.commit(asynchronous=False)

    except Stop:
        pass
    finally:
        consumer.close()
    check(len(set(processed)) == len(processed), f"one run processed an event twice: {processed}")
    summary(processed=processed)


def main():
    mode = sys.argv[1]
    if mode == "produce":
        produce(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "consume":
        consume(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        check(False, f"unknown mode {mode!r}")


if __name__ == "__main__":
    run(main, 40)
