//! The broker's concurrency and cascade rules, found by review and kept by these tests.

use gearbox_core::broker::{Broker, BrokerConfig, BrokerError};
use gearbox_core::event::CloudEvent;
use gearbox_core::subscription::{Mode, Settings};
use gearbox_log::Retention;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn broker(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig::durable();
    config.background = false;
    Broker::open(dir, config).unwrap()
}

fn event(id: &str) -> CloudEvent {
    CloudEvent::from_json(&json!({"specversion": "1.0", "id": id, "source": "/t", "type": "t"}))
        .unwrap()
}

/// Rejects the next delivered event, so it is dead-lettered.
fn dead_letter_one(b: &Broker, topic: &str, sub: &str) {
    let (delivered, _) = b.poll(topic, sub, 1).unwrap();
    let d = &delivered[0].stored;
    b.nack(
        topic,
        sub,
        &[(d.partition, d.offset)],
        None,
        true,
        Some("poison"),
    )
    .unwrap();
}

#[test]
fn creating_the_first_dead_letter_topic_does_not_deadlock_with_subscription_admin() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(broker(dir.path()));
    let rounds = 40;
    for i in 0..rounds {
        let t = format!("t{i}");
        b.create_topic(&t, 1, Retention::FOREVER).unwrap();
        b.publish(&t, &[event("a")]).unwrap();
        b.put_subscription(&t, "s", Settings::defaults(Mode::Queue))
            .unwrap();
    }
    // For each topic, one thread re-PUTs its subscription in a tight loop (admin, then the
    // subscription's lock) while another dead-letters its first event (the subscription's lock,
    // then creating <t>.dlq). Before the fix this could hang both for good.
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let putter = {
        let (b, done) = (b.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..rounds {
                while done.load(std::sync::atomic::Ordering::Acquire) <= i {
                    b.put_subscription(&format!("t{i}"), "s", Settings::defaults(Mode::Queue))
                        .unwrap();
                }
            }
        })
    };
    let rejecter = {
        let (b, done) = (b.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..rounds {
                dead_letter_one(&b, &format!("t{i}"), "s");
                done.store(i + 1, std::sync::atomic::Ordering::Release);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(putter.is_finished() && rejecter.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "deadlock: the threads did not finish"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    putter.join().unwrap();
    rejecter.join().unwrap();
    for i in 0..rounds {
        assert_eq!(b.dlq(&format!("t{i}"), 10).unwrap().len(), 1);
    }
}

#[test]
fn deleting_a_topic_deletes_its_dead_letter_topic_and_every_subscription_on_either() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    b.create_topic("t", 4, Retention::FOREVER).unwrap();
    b.publish("t", &[event("a"), event("b")]).unwrap();
    b.put_subscription("t", "s", Settings::defaults(Mode::Queue))
        .unwrap();
    dead_letter_one(&b, "t", "s");
    b.put_subscription("t.dlq", "audit", Settings::defaults(Mode::Queue))
        .unwrap();
    b.delete_topic("t").unwrap();
    assert!(matches!(
        b.describe_topic("t.dlq"),
        Err(BrokerError::TopicNotFound(_))
    ));
    // Recreated with another shape: nothing of the old subscriptions or DLQ leaks through.
    b.create_topic("t", 1, Retention::FOREVER).unwrap();
    b.publish("t", &[event("c")]).unwrap();
    b.put_subscription("t", "s", Settings::defaults(Mode::Queue))
        .unwrap();
    dead_letter_one(&b, "t", "s");
    assert!(matches!(
        b.poll("t.dlq", "audit", 10),
        Err(BrokerError::SubscriptionNotFound { .. })
    ));
    let dlq = b.dlq("t", 10).unwrap();
    assert_eq!(
        dlq.len(),
        1,
        "only the new dead letter, from offset 0 of the new DLQ"
    );
    assert_eq!(dlq[0].offset, 0);
    assert_eq!(b.redrive("t").unwrap(), 1);
}

#[test]
fn subscription_names_refuse_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    b.create_topic("t", 1, Retention::FOREVER).unwrap();
    for bad in ["", "a/b", "\u{1}redrive", "tab\there"] {
        assert!(matches!(
            b.put_subscription("t", bad, Settings::defaults(Mode::Queue)),
            Err(BrokerError::InvalidArgument { .. })
        ));
    }
}
