//! The schema registry through the real `gearbox serve`: Confluent's REST API under `/registry`
//! (ids, versions, lookup, config, compatibility, deletes, error codes), validation of event data
//! at ingest (422 with every violation's JSON pointer, nothing appended), a breaking change
//! refused with 409 while the old version stays in force, strict topics, and the registry
//! surviving SIGKILL.

mod support;

use serde_json::{Value, json};
use support::{Server, free_port};

const SR: &str = "application/vnd.schemaregistry.v1+json";

fn order_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "order_id": {"type": "string"},
            "customer": {"type": "string"},
            "total": {"type": "number", "minimum": 0},
            "currency": {"type": "string", "enum": ["EUR", "USD"]},
            "items": {"type": "array", "items": {"type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                "required": ["sku", "qty"]}},
            "paid": {"type": "boolean"},
            "created": {"type": "string"},
            "channel": {"type": "string"},
            "coupon": {"type": "string"},
            "note": {"type": "string"}
        },
        "required": ["order_id", "customer", "total", "currency"],
        // Closed: under Confluent's rules adding an optional property to an open content model
        // is not backward compatible, to a closed one it is.
        "additionalProperties": false
    })
}

fn register(s: &Server, subject: &str, schema: &Value, ty: &str) -> (u16, Value) {
    s.post_raw(
        &format!("/registry/subjects/{subject}/versions"),
        SR,
        &[],
        json!({"schema": schema.to_string(), "schemaType": ty})
            .to_string()
            .as_bytes(),
    )
}

fn publish(s: &Server, events: &[Value]) -> (u16, Value) {
    s.post_raw(
        "/v1/topics/orders/events",
        "application/cloudevents-batch+json",
        &[],
        Value::Array(events.to_vec()).to_string().as_bytes(),
    )
}

fn order(id: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "shop", "type": "OrderPlaced", "data": data})
}

fn high_watermarks(s: &Server) -> Vec<u64> {
    let (_, t) = s.get("/v1/topics/orders");
    t["partition_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["high_watermark"].as_u64().unwrap())
        .collect()
}

#[test]
fn registry_api_ingest_validation_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut s = Server::start_on(&data, port);
    let (status, body) = s.post("/v1/topics", &json!({"name": "orders", "partitions": 2}));
    assert_eq!(status, 201, "{body}");

    // Register, and re-register the same schema: same id.
    let (status, body) = register(&s, "orders-OrderPlaced", &order_schema(), "JSON");
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_u64().unwrap();
    let (_, again) = register(&s, "orders-OrderPlaced", &order_schema(), "JSON");
    assert_eq!(again["id"].as_u64(), Some(id));
    let (_, versions) = s.get("/registry/subjects/orders-OrderPlaced/versions");
    assert_eq!(versions, json!([1]));
    let (status, by_id) = s.get(&format!("/registry/schemas/ids/{id}"));
    assert_eq!(status, 200);
    assert_eq!(by_id["schemaType"], json!("JSON"));
    let (_, latest) = s.get("/registry/subjects/orders-OrderPlaced/versions/latest");
    assert_eq!(latest["version"], json!(1));
    assert_eq!(latest["id"].as_u64(), Some(id));
    let (_, subjects) = s.get("/registry/subjects");
    assert_eq!(subjects, json!(["orders-OrderPlaced"]));

    // Errors in Confluent's shape.
    let (status, e) = s.get("/registry/subjects/nope/versions");
    assert_eq!(
        (status, e["error_code"].clone()),
        (404, json!(40401)),
        "{e}"
    );
    let (status, e) = s.get("/registry/subjects/orders-OrderPlaced/versions/7");
    assert_eq!(
        (status, e["error_code"].clone()),
        (404, json!(40402)),
        "{e}"
    );
    let (status, e) = s.get("/registry/schemas/ids/999");
    assert_eq!(
        (status, e["error_code"].clone()),
        (404, json!(40403)),
        "{e}"
    );
    let (status, e) = s.post_raw(
        "/registry/subjects/x-y/versions",
        SR,
        &[],
        json!({"schema": "{not json", "schemaType": "JSON"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        (status, e["error_code"].clone()),
        (422, json!(42201)),
        "{e}"
    );
    let (status, e) = s.put("/registry/config", &json!({"compatibility": "SIDEWAYS"}));
    assert_eq!(
        (status, e["error_code"].clone()),
        (422, json!(42203)),
        "{e}"
    );

    // Config.
    let (_, c) = s.get("/registry/config");
    assert_eq!(c["compatibilityLevel"], json!("BACKWARD"));
    let (status, e) = s.get("/registry/config/orders-OrderPlaced");
    assert_eq!(
        (status, e["error_code"].clone()),
        (404, json!(40408)),
        "{e}"
    );

    // Ingest: a valid event is accepted and records the schema it was checked against.
    let good = order(
        "o-1",
        json!({"order_id": "o-1", "customer": "c-7", "total": 12.5, "currency": "EUR",
               "items": [{"sku": "A", "qty": 2}], "paid": true}),
    );
    let (status, body) = publish(&s, std::slice::from_ref(&good));
    assert_eq!(status, 201, "{body}");
    let p = body["results"][0]["partition"].as_u64().unwrap();
    let (_, read) = s.get(&format!(
        "/v1/topics/orders/partitions/{p}/events?offset=0&max=10"
    ));
    let stored = &read["events"][0]["event"];
    assert_eq!(stored["schemaid"], json!(id.to_string()), "{stored}");
    assert_eq!(stored["schemaversion"], json!("1"), "{stored}");

    // An invalid event in a batch: 422 naming its index and every violation; nothing appended.
    let before = high_watermarks(&s);
    let bad = order(
        "o-2",
        json!({"order_id": "o-2", "total": -1, "currency": "GBP",
               "items": [{"sku": "A", "qty": 0}]}),
    );
    let (status, e) = publish(&s, &[order("o-3", good["data"].clone()), bad]);
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["code"], json!("schema_violation"));
    assert_eq!(e["field"], json!("events[1].data"));
    let pointers: Vec<&str> = e["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pointer"].as_str().unwrap())
        .collect();
    for want in ["/total", "/currency", "/items/0/qty"] {
        assert!(
            pointers.contains(&want),
            "{want} missing from {pointers:?}: {e}"
        );
    }
    assert!(
        e["violations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["message"].as_str().unwrap().contains("customer")),
        "the missing required property is reported: {e}"
    );
    assert_eq!(
        high_watermarks(&s),
        before,
        "nothing from the request was appended"
    );

    // A breaking change (a new required property) is refused with 409; version 1 stays in force.
    let mut breaking = order_schema();
    breaking["properties"]["region"] = json!({"type": "string"});
    breaking["required"] = json!(["order_id", "customer", "total", "currency", "region"]);
    let (status, e) = register(&s, "orders-OrderPlaced", &breaking, "JSON");
    assert_eq!((status, e["error_code"].clone()), (409, json!(409)), "{e}");
    let (_, versions) = s.get("/registry/subjects/orders-OrderPlaced/versions");
    assert_eq!(versions, json!([1]));
    let (status, body) = publish(&s, &[order("o-4", good["data"].clone())]);
    assert_eq!(status, 201, "version 1 still validates: {body}");
    // ... and the compatibility endpoint says the same without registering.
    let (status, c) = s.post_raw(
        "/registry/compatibility/subjects/orders-OrderPlaced/versions/latest?verbose=true",
        SR,
        &[],
        json!({"schema": breaking.to_string(), "schemaType": "JSON"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["is_compatible"], json!(false), "{c}");
    assert!(!c["messages"].as_array().unwrap().is_empty());

    // A compatible change (a new optional property) registers as version 2.
    let mut compatible = order_schema();
    compatible["properties"]["gift"] = json!({"type": "boolean"});
    let (status, v2) = register(&s, "orders-OrderPlaced", &compatible, "JSON");
    assert_eq!(status, 200, "{v2}");
    assert_ne!(v2["id"], json!(id));

    // Strict topics refuse event types without a schema; open topics take them unchecked.
    let other = json!({"specversion": "1.0", "id": "x-1", "source": "shop", "type": "Unregistered", "data": {}});
    let (status, body) = publish(&s, std::slice::from_ref(&other));
    assert_eq!(status, 201, "{body}");
    let (status, body) = s.put(
        "/v1/topics/orders/schema-policy",
        &json!({"require_schema": true}),
    );
    assert_eq!(status, 200, "{body}");
    let mut other2 = other.clone();
    other2["id"] = json!("x-2");
    let (status, e) = publish(&s, &[other2]);
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["code"], json!("schema_required"));

    // SIGKILL and restart: every id, version, level and policy is intact.
    let (status, _) = s.put(
        "/registry/config/orders-OrderPlaced",
        &json!({"compatibility": "FULL"}),
    );
    assert_eq!(status, 200);
    let snapshot = |s: &Server| {
        (
            s.get("/registry/subjects").1,
            s.get("/registry/subjects/orders-OrderPlaced/versions").1,
            s.get("/registry/subjects/orders-OrderPlaced/versions/1").1,
            s.get("/registry/subjects/orders-OrderPlaced/versions/2").1,
            s.get(&format!("/registry/schemas/ids/{id}")).1,
            s.get("/registry/config/orders-OrderPlaced").1,
            s.get("/v1/topics/orders/schema-policy").1,
        )
    };
    let before = snapshot(&s);
    s.restart_after_kill9();
    assert_eq!(snapshot(&s), before);
    let mut again = good.clone();
    again["id"] = json!("o-5");
    let (status, body) = publish(&s, &[again]);
    assert_eq!(status, 201, "validation works after the restart: {body}");

    // Deletes: soft, then permanent; then the subject is gone.
    let (status, e) = s.delete("/registry/subjects/orders-OrderPlaced?permanent=true");
    assert_eq!(
        (status, e["error_code"].clone()),
        (404, json!(40405)),
        "{e}"
    );
    let (status, deleted) = s.delete("/registry/subjects/orders-OrderPlaced");
    assert_eq!((status, deleted), (200, json!([1, 2])));
    let (status, _) = s.delete("/registry/subjects/orders-OrderPlaced?permanent=true");
    assert_eq!(status, 200);
    let (status, e) = s.get("/registry/subjects/orders-OrderPlaced/versions");
    assert_eq!(
        (status, e["error_code"].clone()),
        (404, json!(40401)),
        "{e}"
    );
}

fn gearbox(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(support::GEARBOX)
        .args(["--server", &s.url])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_schemas_cli_registers_lists_shows_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    let v1 = dir.path().join("reading.avsc");
    std::fs::write(
        &v1,
        r#"{"type":"record","name":"Reading","fields":[{"name":"sensor","type":"string"},{"name":"celsius","type":"double"}]}"#,
    )
    .unwrap();
    let (ok, out, err) = gearbox(
        &s,
        &[
            "schemas",
            "register",
            "plant-Reading",
            "--file",
            v1.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let reply: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(reply["version"], json!(1), "{out}");
    let (ok, out, _) = gearbox(&s, &["schemas", "list"]);
    assert!(ok);
    assert_eq!(out.trim(), "plant-Reading");
    let (ok, out, _) = gearbox(&s, &["schemas", "show", "plant-Reading"]);
    assert!(ok);
    assert!(out.contains("\"celsius\""), "{out}");

    let v2 = dir.path().join("reading2.avsc");
    let check = |site_field: &str| {
        std::fs::write(
            &v2,
            format!(
                r#"{{"type":"record","name":"Reading","fields":[{{"name":"sensor","type":"string"}},{{"name":"celsius","type":"double"}},{site_field}]}}"#
            ),
        )
        .unwrap();
        gearbox(
            &s,
            &[
                "schemas",
                "check",
                "plant-Reading",
                "--file",
                v2.to_str().unwrap(),
            ],
        )
    };
    // A field without a default breaks BACKWARD: check says so and exits nonzero.
    let (ok, out, err) = check(r#"{"name":"site","type":"string"}"#);
    assert!(!ok, "{out}");
    assert!(err.contains("incompatible"), "{err}");
    // With a default it is compatible.
    let (ok, out, err) = check(r#"{"name":"site","type":"string","default":"main"}"#);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), "compatible");
    let (ok, _, err) = gearbox(&s, &["schemas", "show", "nope"]);
    assert!(!ok);
    assert!(err.contains("40401"), "{err}");
}
