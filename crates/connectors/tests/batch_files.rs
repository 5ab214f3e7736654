//! The `files` batch job on real files in a temporary directory: CSV (types, quoted multi-line
//! fields, rejected rows with `file:line`), JSONL, Parquet written with the `parquet` crate,
//! the name and mtime watermarks, the settle time, and the per-run and per-record limits.

#![cfg(feature = "files")]

use gearbox_connect::batch::{BatchJob, Item};
use gearbox_connectors::batch::files::{FilesConfig, FilesJob};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, SystemTime};

fn config(path: &Path, extra: Value) -> FilesConfig {
    let mut c = json!({
        "path": path.to_str().unwrap(),
        "settle_ms": 0,
        "schedule": {"cron": "* * * * *"},
        "event": {"key": ["sku"], "version": "updated_at", "type": "inventory.level"},
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::from_value(c).unwrap()
}

/// Every item of one run from `watermark`, and the watermark it reached.
async fn run(job: &mut FilesJob, watermark: Option<&str>) -> (Vec<Item>, Option<String>) {
    job.start(watermark.map(Into::into)).await.unwrap();
    let mut all = Vec::new();
    loop {
        let items = job.next(7).await.unwrap();
        assert!(items.len() <= 7, "next(max) returned more than max");
        if items.is_empty() {
            break;
        }
        all.extend(items);
    }
    (all, job.watermark())
}

fn events(items: &[Item]) -> Vec<&Value> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e),
            Item::Rejected(_) => None,
        })
        .collect()
}

fn errors(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Rejected(r) => Some(r.error.clone()),
            Item::Event(_) => None,
        })
        .collect()
}

fn age(path: &Path, secs: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

#[tokio::test]
async fn csv_rows_are_typed_and_bad_rows_are_rejected_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inventory-1.csv");
    std::fs::write(
        &file,
        "sku,qty,price,active,note,updated_at\n\
         a1,3,9.5,true,plain,t1\n\
         a2,abc,1,false,x,t1\n\
         ,1,1,true,no key,t1\n\
         a4,1,1\n\
         a5,,2.25,0,\"two\nlines, with a comma\",t1\n\
         \n\
         a6,7,1e2,TRUE,\"quote \"\"inside\"\"\",t2\n",
    )
    .unwrap();
    let mut job = FilesJob::new(
        config(
            &dir.path().join("inventory-*.csv"),
            json!({"types": {"qty": "integer", "price": "number", "active": "boolean"}}),
        ),
        "stock",
    )
    .unwrap();
    let (items, watermark) = run(&mut job, None).await;
    let f = file.display();
    assert_eq!(
        errors(&items),
        vec![
            format!("{f}:3: column `qty` is not an integer: \"abc\""),
            format!("{f}:4: key field `sku` is empty"),
            format!("{f}:5: 3 fields, but the header has 6"),
        ]
    );
    let ev = events(&items);
    assert_eq!(ev.len(), 3);
    assert_eq!(
        ev[0]["data"],
        json!({"sku": "a1", "qty": 3, "price": 9.5, "active": true, "note": "plain", "updated_at": "t1"})
    );
    assert_eq!(ev[0]["source"], "gearbox/stock");
    assert_eq!(ev[0]["type"], "inventory.level");
    assert_eq!(ev[0]["subject"], "a1");
    assert_eq!(ev[0]["origin"], format!("{f}:2"));
    // A quoted field spans lines; the record is numbered by its first line; empty typed → null.
    assert_eq!(ev[1]["origin"], format!("{f}:6"));
    assert_eq!(ev[1]["data"]["note"], "two\nlines, with a comma");
    assert_eq!(ev[1]["data"]["qty"], Value::Null);
    assert_eq!(ev[1]["data"]["active"], false);
    // The blank line 8 is skipped; line 9 follows.
    assert_eq!(ev[2]["origin"], format!("{f}:9"));
    assert_eq!(ev[2]["data"]["note"], "quote \"inside\"");
    assert_eq!(ev[2]["data"]["price"], 100.0);
    assert_eq!(watermark.as_deref(), Some("inventory-1.csv"));
    // The dead letter carries where the row came from and the raw record.
    let Item::Rejected(r) = &items[1] else {
        panic!("the second row is rejected")
    };
    assert_eq!(
        r.record,
        json!({"origin": format!("{f}:3"), "record": "a2,abc,1,false,x,t1"})
    );

    // A rerun of the same export gives the same ids (the log deduplicates them).
    let (again, _) = run(&mut job, None).await;
    let ids =
        |items: &[Item]| -> Vec<Value> { events(items).iter().map(|e| e["id"].clone()).collect() };
    assert_eq!(ids(&items), ids(&again));
}

#[tokio::test]
async fn a_csv_delimiter_and_a_bad_header_lose_no_row() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), "sku;qty\nx;1\n").unwrap();
    std::fs::write(dir.path().join("b.csv"), "sku;sku\nx;1\ny;2\n").unwrap();
    let mut job = FilesJob::new(
        config(
            dir.path(),
            json!({"delimiter": ";", "event": {"key": ["sku"], "type": "t"}}),
        ),
        "p",
    )
    .unwrap();
    let (items, watermark) = run(&mut job, None).await;
    assert_eq!(events(&items).len(), 1);
    assert_eq!(events(&items)[0]["data"], json!({"sku": "x", "qty": "1"}));
    let b = dir.path().join("b.csv");
    let b = b.display();
    assert_eq!(
        errors(&items),
        vec![
            format!("{b}:1: header column `sku` appears twice"),
            format!("{b}:2: the file's header (line 1) is invalid"),
            format!("{b}:3: the file's header (line 1) is invalid"),
        ]
    );
    assert_eq!(watermark.as_deref(), Some("b.csv"));
}

#[tokio::test]
async fn the_name_watermark_reads_only_later_names_and_waits_for_unsettled_files() {
    let dir = tempfile::tempdir().unwrap();
    for (name, sku) in [
        ("d-01.jsonl", "a"),
        ("d-02.jsonl", "b"),
        ("d-03.jsonl", "c"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{{\"sku\": \"{sku}\", \"updated_at\": 1}}\n")).unwrap();
        age(&p, 60);
    }
    let mut job = FilesJob::new(config(dir.path(), json!({"settle_ms": 5000})), "p").unwrap();
    let (items, watermark) = run(&mut job, Some("d-01.jsonl")).await;
    let skus: Vec<_> = events(&items)
        .iter()
        .map(|e| e["subject"].clone())
        .collect();
    assert_eq!(skus, vec![json!("b"), json!("c")]);
    assert_eq!(watermark.as_deref(), Some("d-03.jsonl"));

    // d-04 is still being written (fresh mtime): it and everything after it wait, so d-05 is
    // not read before it.
    std::fs::write(
        dir.path().join("d-04.jsonl"),
        "{\"sku\": \"d\", \"updated_at\": 1}\n",
    )
    .unwrap();
    let p5 = dir.path().join("d-05.jsonl");
    std::fs::write(&p5, "{\"sku\": \"e\", \"updated_at\": 1}\n").unwrap();
    age(&p5, 60);
    let (items, watermark) = run(&mut job, Some("d-03.jsonl")).await;
    assert!(items.is_empty());
    assert_eq!(watermark, None, "nothing read: the watermark stays");
    age(&dir.path().join("d-04.jsonl"), 60);
    let (items, watermark) = run(&mut job, Some("d-03.jsonl")).await;
    assert_eq!(events(&items).len(), 2);
    assert_eq!(watermark.as_deref(), Some("d-05.jsonl"));
}

#[tokio::test]
async fn the_mtime_watermark_orders_by_modification_time_then_name() {
    let dir = tempfile::tempdir().unwrap();
    // Names in the opposite order of their times.
    for (name, secs) in [("a.jsonl", 10), ("b.jsonl", 20), ("c.jsonl", 30)] {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{{\"sku\": \"{name}\", \"updated_at\": 1}}\n")).unwrap();
        age(&p, secs);
    }
    let mut job = FilesJob::new(config(dir.path(), json!({"watermark": "mtime"})), "p").unwrap();
    let (items, watermark) = run(&mut job, None).await;
    let order: Vec<_> = events(&items)
        .iter()
        .map(|e| e["subject"].clone())
        .collect();
    assert_eq!(
        order,
        vec![json!("c.jsonl"), json!("b.jsonl"), json!("a.jsonl")]
    );
    let w = watermark.unwrap();
    assert!(w.ends_with(":a.jsonl") && w.len() == 20 + 1 + 7, "{w}");
    // From b's position, only a is after it.
    let (items, _) = {
        let mut b_mark = None;
        for e in events(&items) {
            if e["subject"] == "b.jsonl" {
                let meta = std::fs::metadata(dir.path().join("b.jsonl")).unwrap();
                let ns = meta
                    .modified()
                    .unwrap()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                b_mark = Some(format!("{ns:020}:b.jsonl"));
            }
        }
        run(&mut job, b_mark.as_deref()).await
    };
    let order: Vec<_> = events(&items)
        .iter()
        .map(|e| e["subject"].clone())
        .collect();
    assert_eq!(order, vec![json!("a.jsonl")]);
}

#[tokio::test]
async fn files_per_run_max_leaves_the_rest_for_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..5 {
        std::fs::write(
            dir.path().join(format!("f{n}.jsonl")),
            format!("{{\"sku\": \"s{n}\", \"updated_at\": 1}}\n"),
        )
        .unwrap();
    }
    let mut job = FilesJob::new(config(dir.path(), json!({"files_per_run_max": 2})), "p").unwrap();
    let (items, w1) = run(&mut job, None).await;
    assert_eq!(events(&items).len(), 2);
    assert_eq!(w1.as_deref(), Some("f1.jsonl"));
    let (items, w2) = run(&mut job, w1.as_deref()).await;
    assert_eq!(events(&items)[0]["subject"], "s2");
    assert_eq!(w2.as_deref(), Some("f3.jsonl"));
    let (items, w3) = run(&mut job, w2.as_deref()).await;
    assert_eq!(events(&items).len(), 1);
    assert_eq!(w3.as_deref(), Some("f4.jsonl"));
}

#[tokio::test]
async fn a_record_over_record_bytes_max_is_rejected_with_its_line_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(500);
    std::fs::write(
        dir.path().join("a.jsonl"),
        format!(
            "{{\"sku\": \"a\", \"updated_at\": 1}}\n{{\"sku\": \"{long}\"}}\nnot json\n[1]\n\n{{\"sku\": \"b\", \"updated_at\": 2}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.csv"),
        format!("sku,updated_at\n\"{long}\nstill the same record\",1\nc,3\n"),
    )
    .unwrap();
    let mut job = FilesJob::new(config(dir.path(), json!({"record_bytes_max": 64})), "p").unwrap();
    let (items, watermark) = run(&mut job, None).await;
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.csv");
    let errs = errors(&items);
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert_eq!(
        errs[0],
        format!(
            "{}:2: the line is longer than record_bytes_max (64 bytes)",
            a.display()
        )
    );
    assert!(
        errs[1].starts_with(&format!("{}:3: not JSON", a.display())),
        "{}",
        errs[1]
    );
    assert_eq!(
        errs[2],
        format!("{}:4: the line is not a JSON object", a.display())
    );
    assert_eq!(
        errs[3],
        format!(
            "{}:2: the record is longer than record_bytes_max (64 bytes)",
            b.display()
        )
    );
    let subjects: Vec<_> = events(&items)
        .iter()
        .map(|e| e["subject"].clone())
        .collect();
    assert_eq!(subjects, vec![json!("a"), json!("b"), json!("c")]);
    assert_eq!(events(&items)[2]["origin"], format!("{}:4", b.display()));
    assert_eq!(watermark.as_deref(), Some("b.csv"));
}

#[tokio::test]
async fn parquet_rows_become_events_and_a_null_key_names_the_row() {
    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stock-1.parquet");
    let batch = RecordBatch::try_from_iter(vec![
        (
            "sku",
            Arc::new(StringArray::from(vec![Some("p1"), Some("p2"), None])) as ArrayRef,
        ),
        ("qty", Arc::new(Int64Array::from(vec![5, 6, 7])) as ArrayRef),
        (
            "price",
            Arc::new(Float64Array::from(vec![1.5, 2.0, 3.0])) as ArrayRef,
        ),
        (
            "updated_at",
            Arc::new(StringArray::from(vec!["t1", "t2", "t3"])) as ArrayRef,
        ),
    ])
    .unwrap();
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    // Not Parquet, though named so; and a file of no known format.
    std::fs::write(dir.path().join("stock-2.parquet"), "nope").unwrap();
    std::fs::write(dir.path().join("stock-3.txt"), "sku\n").unwrap();

    let mut job = FilesJob::new(config(dir.path(), json!({})), "p").unwrap();
    let (items, watermark) = run(&mut job, None).await;
    let ev = events(&items);
    assert_eq!(ev.len(), 2);
    assert_eq!(
        ev[0]["data"],
        json!({"sku": "p1", "qty": 5, "price": 1.5, "updated_at": "t1"})
    );
    assert_eq!(ev[1]["origin"], format!("{}#row 2", path.display()));
    let errs = errors(&items);
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_eq!(
        errs[0],
        format!("{}#row 3: key field `sku` is null", path.display())
    );
    assert!(
        errs[1].starts_with(&format!(
            "{}: not a readable Parquet file",
            dir.path().join("stock-2.parquet").display()
        )),
        "{}",
        errs[1]
    );
    assert!(
        errs[2].contains("stock-3.txt: unknown format"),
        "{}",
        errs[2]
    );
    assert_eq!(watermark.as_deref(), Some("stock-3.txt"));
}

#[tokio::test]
async fn validation_names_every_field() {
    let c: FilesConfig = serde_json::from_value(json!({
        "path": "/data/*/x.csv",
        "format": "jsonl",
        "delimiter": ";",
        "types": {"q": "integer"},
        "files_per_run_max": 0,
        "record_bytes_max": 0,
        "schedule": {"cron": "not cron"},
        "event": {"key": [], "type": ""},
    }))
    .unwrap();
    let paths: Vec<String> = c.validate().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        vec![
            "path",
            "delimiter",
            "types",
            "files_per_run_max",
            "record_bytes_max",
            "schedule.cron",
            "event.key",
            "event.type"
        ]
    );
    let unknown = serde_json::from_value::<FilesConfig>(json!({
        "path": "/x", "schedule": {"cron": "* * * * *"},
        "event": {"key": ["a"], "type": "t", "extra": 1},
    }));
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `extra`")
    );
}
