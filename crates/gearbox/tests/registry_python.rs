//! A real client for the schema registry: Confluent's `SchemaRegistryClient` (PyPI's
//! `confluent-kafka`, pinned in `tests/python/requirements.txt`, installed into `.venv` by
//! `.ci/python-env`) pointed at `gearbox serve`'s `/registry`, as at a Confluent Schema Registry.
//!
//! The client is `tests/python/schema_registry_client.py`: register (JSON Schema and Avro), get
//! by id, list versions, lookup, set and get compatibility, test_compatibility both ways, the
//! 409 on an incompatible registration, and deletes. This test starts the server, runs it, and
//! checks that every check printed its `ok` line.

mod support;

use support::Server;

/// The `ok` lines the script prints, in order, one per check.
const CHECKS: &[&str] = &[
    "get_schema_types",
    "register_schema json",
    "register_schema avro",
    "register_schema again: same id, no new version",
    "get_schema by id json",
    "get_schema by id avro",
    "get_subjects",
    "get_versions",
    "get_latest_version",
    "get_version 1",
    "lookup_schema",
    "set_compatibility and get_compatibility global",
    "set_compatibility and get_compatibility subject",
    "test_compatibility compatible json is True, and it registers as version 2",
    "test_compatibility compatible avro is True, and it registers as version 2",
    "delete_version",
    "delete_subject soft",
    "delete_subject permanent",
    "get on the deleted subject is 404 with error_code 40401",
    "register_schema after the permanent delete starts at version 1",
    "test_compatibility incompatible json is False, and registering it is 409",
    "test_compatibility incompatible avro is False, and registering it is 409",
];

#[test]
fn confluent_schema_registry_client_works_against_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    let registry = format!("{}/registry", s.url);

    let stdout = support::run_python("schema_registry_client.py", &[&registry], &s);
    let ok: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ok "))
        .collect();
    assert_eq!(
        ok, CHECKS,
        "the checks that passed are not the expected ones\nstdout:\n{stdout}"
    );
    assert!(
        stdout.contains("every check passed"),
        "no summary line in the output:\n{stdout}"
    );
}
