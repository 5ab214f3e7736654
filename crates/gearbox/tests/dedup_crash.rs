//! Deduplication on `source` + `id` through the real binary: a duplicate is not appended again
//! and its result carries the original partition and offset with `duplicate: true`, in every
//! CloudEvents mode (structured, batched, binary), for a repeat inside one batch, and after a
//! SIGKILL and restart (the window is rebuilt from the log). The same id with another source is
//! a different event.

mod support;

use gearbox_core::partitioner::partition_for;
use serde_json::{Value, json};
use support::{Server, event};

const TOPIC: &str = "dd";
const PARTITIONS: u32 = 3;
const EVENTS: &str = "/v1/topics/dd/events";

/// One event's result: (id, partition, offset, duplicate).
type Result1 = (String, u32, u64, bool);

fn results(status: u16, body: &Value) -> Vec<Result1> {
    assert_eq!(status, 201, "publish failed: {body}");
    body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {body}"))
        .iter()
        .map(|r| {
            (
                r["id"].as_str().expect("id").to_string(),
                u32::try_from(r["partition"].as_u64().expect("partition")).unwrap(),
                r["offset"].as_u64().expect("offset"),
                r["duplicate"].as_bool().expect("duplicate"),
            )
        })
        .collect()
}

fn structured(s: &Server, e: &Value) -> Result1 {
    let (status, body) = s.post_raw(
        EVENTS,
        "application/cloudevents+json",
        &[],
        e.to_string().as_bytes(),
    );
    let mut r = results(status, &body);
    assert_eq!(r.len(), 1, "{body}");
    r.remove(0)
}

fn batch(s: &Server, events: &[Value]) -> Vec<Result1> {
    let (status, body) = s.post_raw(
        EVENTS,
        "application/cloudevents-batch+json",
        &[],
        Value::Array(events.to_vec()).to_string().as_bytes(),
    );
    let r = results(status, &body);
    assert_eq!(r.len(), events.len(), "{body}");
    for (res, e) in r.iter().zip(events) {
        assert_eq!(
            res.0,
            e["id"].as_str().unwrap(),
            "results are in request order"
        );
    }
    r
}

fn binary(s: &Server, id: &str, source: &str, body: &str) -> Result1 {
    let (status, reply) = s.post_raw(
        EVENTS,
        "text/plain",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", source),
            ("ce-type", "test.binary"),
        ],
        body.as_bytes(),
    );
    let mut r = results(status, &reply);
    assert_eq!(r.len(), 1, "{reply}");
    r.remove(0)
}

/// The same result, but reported as a duplicate.
fn dup(r: &Result1) -> Result1 {
    (r.0.clone(), r.1, r.2, true)
}

/// Sum of the topic's high watermarks.
fn events_stored(s: &Server) -> u64 {
    let (status, t) = s.get(&format!("/v1/topics/{TOPIC}"));
    assert_eq!(status, 200, "{t}");
    t["partition_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["high_watermark"].as_u64().unwrap())
        .sum()
}

/// The (id, source) stored at a position.
fn stored_at(s: &Server, partition: u32, offset: u64) -> (String, String) {
    let (status, v) = s.get(&format!(
        "/v1/topics/{TOPIC}/partitions/{partition}/events?offset={offset}&max=1"
    ));
    assert_eq!(status, 200, "{v}");
    let e = &v["events"][0];
    assert_eq!(e["offset"], json!(offset), "{v}");
    (
        e["event"]["id"].as_str().unwrap().to_string(),
        e["event"]["source"].as_str().unwrap().to_string(),
    )
}

/// Every (id, source) in the topic, in partition and offset order.
fn everything(s: &Server) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let (status, v) = s.get(&format!(
            "/v1/topics/{TOPIC}/partitions/{p}/events?offset=0&max=1000"
        ));
        assert_eq!(status, 200, "{v}");
        for e in v["events"].as_array().unwrap() {
            out.push((
                e["event"]["id"].as_str().unwrap().to_string(),
                e["event"]["source"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

fn with_key(mut e: Value, key: &str) -> Value {
    e["partitionkey"] = json!(key);
    e
}

fn start(dir: &tempfile::TempDir) -> Server {
    let s = Server::start(&dir.path().join("data"));
    let (status, body) = s.post(
        "/v1/topics",
        &json!({"name": TOPIC, "partitions": PARTITIONS}),
    );
    assert_eq!(status, 201, "{body}");
    s
}

#[test]
fn a_duplicate_returns_the_original_position_also_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir);

    // First publication, in each mode.
    let e1 = event("s-1", "/a", json!({"n": 1}));
    let batch1 = vec![
        event("b-1", "/a", json!({"n": 2})),
        with_key(event("b-2", "/a", json!({"n": 3})), "k-1"),
        event("b-3", "/b", json!({"n": 4})),
        with_key(event("b-4", "/b", json!({"n": 5})), "k-1"),
    ];
    let r1 = structured(&s, &e1);
    let rb = batch(&s, &batch1);
    let rbin = binary(&s, "bin-1", "/a", "hello");
    let mut originals = vec![r1.clone()];
    originals.extend(rb.iter().cloned());
    originals.push(rbin.clone());
    for (r, key) in originals
        .iter()
        .zip(["s-1", "b-1", "k-1", "b-3", "k-1", "bin-1"])
    {
        assert!(!r.3, "first publication is not a duplicate: {r:?}");
        assert_eq!(
            r.1,
            partition_for(key.as_bytes(), PARTITIONS),
            "placed by the key: {r:?}"
        );
    }
    let stored = events_stored(&s);
    assert_eq!(stored, 6);

    let republish = |s: &Server, when: &str| {
        let before = events_stored(s);
        assert_eq!(structured(s, &e1), dup(&r1), "{when}: structured");
        let again: Vec<Result1> = rb.iter().map(dup).collect();
        assert_eq!(batch(s, &batch1), again, "{when}: batched");
        assert_eq!(
            binary(s, "bin-1", "/a", "hello"),
            dup(&rbin),
            "{when}: binary"
        );
        // Dedup is on source + id only: another mode and other data are still the same event.
        assert_eq!(
            binary(s, "s-1", "/a", "other data"),
            dup(&r1),
            "{when}: structured event repeated in binary mode"
        );
        assert_eq!(
            structured(s, &event("b-3", "/b", json!({"changed": true}))),
            dup(&rb[2]),
            "{when}: batched event repeated in structured mode with other data"
        );
        assert_eq!(
            batch(s, &[event("bin-1", "/a", json!("x"))]),
            vec![dup(&rbin)],
            "{when}: binary event repeated in a batch"
        );
        assert_eq!(
            events_stored(s),
            before,
            "{when}: duplicates are not appended"
        );
    };
    republish(&s, "before the kill");

    s.restart_after_kill9();
    assert_eq!(events_stored(&s), stored, "nothing lost in the kill");
    republish(&s, "after SIGKILL and restart");

    // A batch mixing new and already-seen ids (repeats inside one batch: the next test).
    let mixed = vec![
        event("n-1", "/a", json!({"n": 10})),
        event("b-2", "/a", json!({"n": 3})),
        event("n-2", "/b", json!({"n": 11})),
        e1.clone(),
        event("bin-1", "/a", json!("hello")),
    ];
    let rm = batch(&s, &mixed);
    assert!(!rm[0].3 && !rm[2].3, "new ids are appended: {rm:?}");
    assert_eq!(rm[1], dup(&rb[1]), "an old id keeps its original position");
    assert_eq!(rm[3], dup(&r1));
    assert_eq!(rm[4], dup(&rbin));
    let stored_after_mixed = events_stored(&s);
    assert_eq!(
        stored_after_mixed,
        stored + 2,
        "only the two new ids were appended"
    );
    for r in [&rm[0], &rm[2]] {
        assert_eq!(
            stored_at(&s, r.1, r.2).0,
            r.0,
            "{r:?} is where it was reported"
        );
    }

    // The whole mixed batch again, after another kill: everything is a duplicate now.
    s.restart_after_kill9();
    let again: Vec<Result1> = rm.iter().map(dup).collect();
    assert_eq!(
        batch(&s, &mixed),
        again,
        "mixed batch after the second kill"
    );
    republish(&s, "after the second SIGKILL");
    assert_eq!(events_stored(&s), stored_after_mixed);

    // Every reported position holds that event, and no event is stored twice.
    for r in originals.iter().chain(&rm) {
        assert_eq!(stored_at(&s, r.1, r.2).0, r.0, "{r:?}");
    }
    let all = everything(&s);
    assert_eq!(all.len() as u64, stored_after_mixed);
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), all.len(), "no event stored twice: {all:?}");
}

#[test]
fn the_same_id_with_another_source_is_not_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir);
    let a = structured(&s, &event("same", "/a", json!(1)));
    let b = structured(&s, &event("same", "/b", json!(2)));
    assert!(!a.3 && !b.3, "{a:?} {b:?}");
    assert_ne!((a.1, a.2), (b.1, b.2), "two events at two positions");
    // Binary mode and a batch with a third source, and a repeat of /a inside it.
    let c = binary(&s, "same", "/c", "three");
    assert!(!c.3, "{c:?}");
    let r = batch(
        &s,
        &[event("same", "/d", json!(4)), event("same", "/a", json!(1))],
    );
    assert!(!r[0].3, "{r:?}");
    assert_eq!(r[1], dup(&a), "{r:?}");
    assert_eq!(events_stored(&s), 4);
    // Sources that only differ in where the source/id boundary is are different keys too.
    let x = structured(&s, &event("b/x", "/a", json!(5)));
    let y = structured(&s, &event("x", "/a/b", json!(6)));
    assert!(!x.3 && !y.3, "{x:?} {y:?}");
    assert_eq!(events_stored(&s), 6);

    s.restart_after_kill9();
    assert_eq!(structured(&s, &event("same", "/a", json!(1))), dup(&a));
    assert_eq!(structured(&s, &event("same", "/b", json!(2))), dup(&b));
    assert_eq!(binary(&s, "same", "/c", "three"), dup(&c));
    assert_eq!(structured(&s, &event("same", "/d", json!(4))), dup(&r[0]));
    assert_eq!(structured(&s, &event("b/x", "/a", json!(5))), dup(&x));
    assert_eq!(structured(&s, &event("x", "/a/b", json!(6))), dup(&y));
    let e = structured(&s, &event("same", "/e", json!(7)));
    assert!(!e.3, "a fifth source after the restart is new: {e:?}");
    assert_eq!(events_stored(&s), 7);
    for r in [&a, &b, &c, &r[0], &e] {
        assert_eq!(stored_at(&s, r.1, r.2).0, "same", "{r:?}");
    }
    let sources: Vec<String> = [&a, &b, &c, &r[0], &e]
        .iter()
        .map(|r| stored_at(&s, r.1, r.2).1)
        .collect();
    assert_eq!(sources, ["/a", "/b", "/c", "/d", "/e"]);
}

#[test]
fn a_repeat_inside_one_batch_is_a_duplicate_of_its_first_occurrence() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir);
    let old = structured(&s, &event("old", "/a", json!(0)));
    assert!(!old.3, "{old:?}");
    // A new id twice, and an old id twice, in one batch.
    let request = vec![
        event("new", "/a", json!(1)),
        event("old", "/a", json!(0)),
        event("other", "/a", json!(2)),
        event("new", "/a", json!(1)),
        event("old", "/a", json!(0)),
    ];
    let (status, body) = s.post_raw(
        EVENTS,
        "application/cloudevents-batch+json",
        &[],
        Value::Array(request.clone()).to_string().as_bytes(),
    );
    assert_eq!(
        status,
        201,
        "a batch repeating source+id must be accepted (the repeat is a duplicate of its first \
         occurrence); reply {body}; the topic now holds {} events (1 before the request); \
         server log:\n{}",
        events_stored(&s),
        s.log_text()
    );
    let r = results(status, &body);
    assert!(!r[0].3 && !r[2].3, "{r:?}");
    assert_eq!(r[1], dup(&old));
    assert_eq!(
        r[3],
        dup(&r[0]),
        "the new id's repeat points at its first occurrence"
    );
    assert_eq!(
        r[4],
        dup(&old),
        "the old id's repeat points at the original"
    );
    assert_eq!(events_stored(&s), 3, "only `new` and `other` were appended");

    s.restart_after_kill9();
    let again: Vec<Result1> = r.iter().map(dup).collect();
    assert_eq!(
        batch(&s, &request),
        again,
        "the same batch after SIGKILL and restart"
    );
    assert_eq!(events_stored(&s), 3);
    let all = everything(&s);
    let ids: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["new", "old", "other"],
        "each event stored once: {all:?}"
    );
}
