#!/usr/bin/env python3
"""A real client against Gearbox's schema registry: Confluent's `SchemaRegistryClient`.

Usage: schema_registry_client.py REGISTRY_URL   (http://127.0.0.1:PORT/registry)

The client is `confluent_kafka.schema_registry.SchemaRegistryClient` from PyPI (pinned in
tests/python/requirements.txt), pointed at Gearbox's `/registry` exactly as at a Confluent
Schema Registry. Against an empty registry it:

- registers a JSON Schema (a 10-property object) under `orders-OrderPlaced` and an Avro record
  under `payments-PaymentCaptured` (subjects are `<topic>-<event type>`), and re-registers one
  (same id, no new version);
- reads them back: get_schema by id (equal as JSON), get_subjects, get_versions,
  get_latest_version, get_version(subject, 1), lookup_schema (and a lookup of an unregistered
  schema: 404, error_code 40403);
- sets and gets compatibility: the global level (BACKWARD) and a subject's (FULL);
- evolves both compatibly: test_compatibility is True (JSON: an optional property added to a
  closed object, under BACKWARD; Avro: a field with a default added, under FULL), and the
  registration makes version 2 with a new id;
- deletes: delete_version, delete_subject soft then permanent, with the 404s (error_code 40401)
  a deleted subject answers, and registers the subject afresh (version 1 again);
- breaks compatibility: test_compatibility is False and registering answers HTTP 409 with
  error_code 409, for JSON Schema (a new required property, under BACKWARD) and for Avro (a
  field without a default, under FULL), and no version is added.

Every call goes to the server: the client's caches are cleared before each check. Prints
`ok <check>` per check, with the requests it made indented below; exits 1 with a message at the
first failure.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any, Callable, NoReturn

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError

JSON_SUBJECT = "orders-OrderPlaced"
AVRO_SUBJECT = "payments-PaymentCaptured"

# A closed object (additionalProperties: false), so that adding an optional property is a
# backward-compatible change under any reading of JSON Schema compatibility (Confluent's
# included), while adding a required one is not.
ORDER_PLACED: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "OrderPlaced",
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "customer_id": {"type": "string"},
        "placed_at": {"type": "string", "format": "date-time"},
        "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
        "total": {"type": "number", "minimum": 0},
        "item_count": {"type": "integer", "minimum": 1},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1},
                },
                "required": ["sku", "quantity"],
            },
        },
        "shipping_address": {
            "type": "object",
            "properties": {
                "line1": {"type": "string"},
                "city": {"type": "string"},
                "country": {"type": "string"},
            },
        },
        "gift": {"type": "boolean"},
        "note": {"type": ["string", "null"]},
    },
    "required": ["order_id", "customer_id", "placed_at", "currency", "total"],
    "additionalProperties": False,
}

PAYMENT_CAPTURED: dict[str, Any] = {
    "type": "record",
    "name": "PaymentCaptured",
    "namespace": "com.example.payments",
    "fields": [
        {"name": "payment_id", "type": "string"},
        {"name": "order_id", "type": "string"},
        {"name": "amount_cents", "type": "long"},
        {
            "name": "currency",
            "type": {"type": "enum", "name": "Currency", "symbols": ["EUR", "USD", "GBP"]},
        },
        {"name": "captured_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "card_last4", "type": ["null", "string"], "default": None},
    ],
}


def order_placed_v2() -> dict[str, Any]:
    """v1 plus an optional property: backward compatible."""
    s = copy.deepcopy(ORDER_PLACED)
    s["properties"]["loyalty_tier"] = {"type": "string"}
    return s


def order_placed_breaking() -> dict[str, Any]:
    """v1 plus a new REQUIRED property: data written with v1 lacks it, so not backward
    compatible."""
    s = copy.deepcopy(ORDER_PLACED)
    s["properties"]["sales_channel"] = {"type": "string"}
    s["required"].append("sales_channel")
    return s


def payment_captured_v2() -> dict[str, Any]:
    """v1 plus a field with a default: compatible both ways (FULL)."""
    s = copy.deepcopy(PAYMENT_CAPTURED)
    s["fields"].append({"name": "processor", "type": "string", "default": "stripe"})
    return s


def payment_captured_breaking() -> dict[str, Any]:
    """v2 plus a field WITHOUT a default: the new schema cannot read data written with v2, so
    not backward (and so not FULL) compatible."""
    s = payment_captured_v2()
    s["fields"].append({"name": "risk_score", "type": "double"})
    return s


def json_schema(doc: dict[str, Any]) -> Schema:
    return Schema(json.dumps(doc), schema_type="JSON")


def avro_schema(doc: dict[str, Any]) -> Schema:
    return Schema(json.dumps(doc), schema_type="AVRO")


class Failure(Exception):
    """A check failed; the message says what was expected and what came back."""


def fail(message: str) -> NoReturn:
    raise Failure(message)


def expect(cond: bool, message: str) -> None:
    if not cond:
        fail(message)


def same_json(got: str | None, want: dict[str, Any], what: str) -> None:
    expect(got is not None, f"{what}: no schema text in the response")
    try:
        parsed = json.loads(got)  # type: ignore[arg-type]
    except ValueError as e:
        fail(f"{what}: the schema text is not JSON ({e}): {got!r}")
    expect(parsed == want, f"{what}: the schema differs from the one registered:\n"
           f"  got  {json.dumps(parsed, sort_keys=True)}\n  want {json.dumps(want, sort_keys=True)}")


def expect_error(what: str, call: Callable[[], Any], status: int, code: int) -> SchemaRegistryError:
    """`call` must raise SchemaRegistryError with this HTTP status and error_code."""
    try:
        result = call()
    except SchemaRegistryError as e:
        expect(
            e.http_status_code == status and e.error_code == code,
            f"{what}: want HTTP {status} with error_code {code}, got HTTP "
            f"{e.http_status_code} with error_code {e.error_code} ({e.error_message!r})",
        )
        return e
    fail(f"{what}: want a SchemaRegistryError (HTTP {status}, error_code {code}), "
         f"but the call succeeded and returned {result!r}")


class Run:
    """The client, with the requests of the current check recorded for the output."""

    def __init__(self, url: str) -> None:
        self.client = SchemaRegistryClient({"url": url, "timeout": 20})
        self.requests: list[str] = []
        session = getattr(getattr(self.client, "_rest_client", None), "session", None)
        hooks = getattr(session, "event_hooks", None)
        if hooks is not None:
            hooks["response"].append(self._record)

    def _record(self, response: Any) -> None:
        r = response.request
        path = r.url.raw_path.decode("ascii", "replace")
        self.requests.append(f"{r.method} {path} -> {response.status_code}")

    def check(self, name: str, body: Callable[[SchemaRegistryClient], None]) -> None:
        # Each check talks to the server, not to what the client remembers.
        self.client.clear_caches()
        self.requests = []
        try:
            body(self.client)
        except Failure as e:
            self._failed(name)
            raise Failure(f"{name}: {e}") from None
        except SchemaRegistryError as e:
            self._failed(name)
            raise Failure(
                f"{name}: unexpected SchemaRegistryError: HTTP {e.http_status_code}, "
                f"error_code {e.error_code}, message {e.error_message!r}"
            ) from None
        except Exception as e:
            self._failed(name)
            raise Failure(f"{name}: the client raised {type(e).__name__}: {e}") from e
        print(f"ok {name}")
        self._show()

    def _failed(self, name: str) -> None:
        print(f"FAILED {name}")
        self._show()

    def _show(self) -> None:
        for line in self.requests:
            print(f"    {line}")
        sys.stdout.flush()


def main(url: str) -> None:
    run = Run(url)
    ids: dict[str, int] = {}

    def types(c: SchemaRegistryClient) -> None:
        got = c.get_schema_types()
        expect(isinstance(got, list) and "JSON" in got and "AVRO" in got,
               f"get_schema_types: want a list with JSON and AVRO, got {got!r}")

    run.check("get_schema_types", types)

    def register_json(c: SchemaRegistryClient) -> None:
        got = c.register_schema(JSON_SUBJECT, json_schema(ORDER_PLACED))
        expect(isinstance(got, int) and got > 0, f"register_schema: want a positive id, got {got!r}")
        ids["json"] = got

    run.check("register_schema json", register_json)

    def register_avro(c: SchemaRegistryClient) -> None:
        got = c.register_schema(AVRO_SUBJECT, avro_schema(PAYMENT_CAPTURED))
        expect(isinstance(got, int) and got > 0, f"register_schema: want a positive id, got {got!r}")
        expect(got != ids["json"], f"the Avro schema got the JSON schema's id {got}")
        ids["avro"] = got

    run.check("register_schema avro", register_avro)

    def reregister(c: SchemaRegistryClient) -> None:
        got = c.register_schema(JSON_SUBJECT, json_schema(ORDER_PLACED))
        expect(got == ids["json"], f"re-registering: want the same id {ids['json']}, got {got!r}")
        versions = c.get_versions(JSON_SUBJECT)
        expect(versions == [1], f"re-registering made a version: versions are {versions!r}, want [1]")

    run.check("register_schema again: same id, no new version", reregister)

    def by_id_json(c: SchemaRegistryClient) -> None:
        s = c.get_schema(ids["json"])
        expect(s.schema_type == "JSON", f"schema_type: want JSON, got {s.schema_type!r}")
        same_json(s.schema_str, ORDER_PLACED, "get_schema(json id)")

    run.check("get_schema by id json", by_id_json)

    def by_id_avro(c: SchemaRegistryClient) -> None:
        s = c.get_schema(ids["avro"])
        expect(s.schema_type == "AVRO", f"schema_type: want AVRO, got {s.schema_type!r}")
        same_json(s.schema_str, PAYMENT_CAPTURED, "get_schema(avro id)")

    run.check("get_schema by id avro", by_id_avro)

    def subjects(c: SchemaRegistryClient) -> None:
        got = c.get_subjects()
        expect(sorted(got) == sorted([JSON_SUBJECT, AVRO_SUBJECT]),
               f"get_subjects: want {[JSON_SUBJECT, AVRO_SUBJECT]}, got {got!r}")

    run.check("get_subjects", subjects)

    def versions(c: SchemaRegistryClient) -> None:
        for subject in (JSON_SUBJECT, AVRO_SUBJECT):
            got = c.get_versions(subject)
            expect(got == [1], f"get_versions({subject}): want [1], got {got!r}")

    run.check("get_versions", versions)

    def latest(c: SchemaRegistryClient) -> None:
        r = c.get_latest_version(JSON_SUBJECT)
        expect((r.subject, r.version, r.schema_id) == (JSON_SUBJECT, 1, ids["json"]),
               f"get_latest_version: want ({JSON_SUBJECT!r}, 1, {ids['json']}) as (subject, "
               f"version, id), got ({r.subject!r}, {r.version!r}, {r.schema_id!r})")
        expect(r.schema.schema_type == "JSON", f"schema_type: want JSON, got {r.schema.schema_type!r}")
        same_json(r.schema.schema_str, ORDER_PLACED, "get_latest_version")

    run.check("get_latest_version", latest)

    def version_1(c: SchemaRegistryClient) -> None:
        r = c.get_version(AVRO_SUBJECT, 1)
        expect((r.subject, r.version, r.schema_id) == (AVRO_SUBJECT, 1, ids["avro"]),
               f"get_version: want ({AVRO_SUBJECT!r}, 1, {ids['avro']}) as (subject, version, "
               f"id), got ({r.subject!r}, {r.version!r}, {r.schema_id!r})")
        expect(r.schema.schema_type == "AVRO", f"schema_type: want AVRO, got {r.schema.schema_type!r}")
        same_json(r.schema.schema_str, PAYMENT_CAPTURED, "get_version")

    run.check("get_version 1", version_1)

    def lookup(c: SchemaRegistryClient) -> None:
        r = c.lookup_schema(JSON_SUBJECT, json_schema(ORDER_PLACED))
        expect((r.subject, r.version, r.schema_id) == (JSON_SUBJECT, 1, ids["json"]),
               f"lookup_schema: want ({JSON_SUBJECT!r}, 1, {ids['json']}) as (subject, version, "
               f"id), got ({r.subject!r}, {r.version!r}, {r.schema_id!r})")
        r = c.lookup_schema(AVRO_SUBJECT, avro_schema(PAYMENT_CAPTURED))
        expect((r.version, r.schema_id) == (1, ids["avro"]),
               f"lookup_schema avro: want version 1 id {ids['avro']}, got {r.version!r} {r.schema_id!r}")
        expect_error("lookup_schema of a schema not registered under the subject",
                     lambda: c.lookup_schema(JSON_SUBJECT, json_schema(order_placed_v2())), 404, 40403)

    run.check("lookup_schema", lookup)

    def global_level(c: SchemaRegistryClient) -> None:
        got = c.set_compatibility(level="BACKWARD")
        expect(got == {"compatibility": "BACKWARD"},
               f"set_compatibility (global): want {{'compatibility': 'BACKWARD'}}, got {got!r}")
        level = c.get_compatibility()
        expect(level == "BACKWARD", f"get_compatibility (global): want BACKWARD, got {level!r}")

    run.check("set_compatibility and get_compatibility global", global_level)

    def subject_level(c: SchemaRegistryClient) -> None:
        got = c.set_compatibility(AVRO_SUBJECT, "FULL")
        expect(got == {"compatibility": "FULL"},
               f"set_compatibility({AVRO_SUBJECT}): want {{'compatibility': 'FULL'}}, got {got!r}")
        level = c.get_compatibility(AVRO_SUBJECT)
        expect(level == "FULL", f"get_compatibility({AVRO_SUBJECT}): want FULL, got {level!r}")
        level = c.get_compatibility()
        expect(level == "BACKWARD", f"the global level changed with the subject's: {level!r}")

    run.check("set_compatibility and get_compatibility subject", subject_level)

    def evolve_json(c: SchemaRegistryClient) -> None:
        ok = c.test_compatibility(JSON_SUBJECT, json_schema(order_placed_v2()))
        expect(ok is True, "test_compatibility of an optional property added to a closed object "
               f"under BACKWARD: want True, got {ok!r}")
        got = c.register_schema(JSON_SUBJECT, json_schema(order_placed_v2()))
        expect(isinstance(got, int) and got not in ids.values(),
               f"register_schema of v2: want a new id, got {got!r} (ids so far {ids})")
        ids["json2"] = got
        versions = c.get_versions(JSON_SUBJECT)
        expect(versions == [1, 2], f"get_versions after v2: want [1, 2], got {versions!r}")

    run.check("test_compatibility compatible json is True, and it registers as version 2", evolve_json)

    def evolve_avro(c: SchemaRegistryClient) -> None:
        ok = c.test_compatibility(AVRO_SUBJECT, avro_schema(payment_captured_v2()))
        expect(ok is True, "test_compatibility of a field with a default added under FULL: "
               f"want True, got {ok!r}")
        got = c.register_schema(AVRO_SUBJECT, avro_schema(payment_captured_v2()))
        expect(isinstance(got, int) and got not in ids.values(),
               f"register_schema of v2: want a new id, got {got!r} (ids so far {ids})")
        ids["avro2"] = got
        r = c.get_latest_version(AVRO_SUBJECT)
        expect((r.version, r.schema_id) == (2, got),
               f"get_latest_version after v2: want version 2 id {got}, got {r.version!r} {r.schema_id!r}")

    run.check("test_compatibility compatible avro is True, and it registers as version 2", evolve_avro)

    def delete_version(c: SchemaRegistryClient) -> None:
        got = c.delete_version(JSON_SUBJECT, 2)
        expect(got == 2, f"delete_version({JSON_SUBJECT}, 2): want 2, got {got!r}")
        versions = c.get_versions(JSON_SUBJECT)
        expect(versions == [1], f"get_versions after deleting version 2: want [1], got {versions!r}")
        r = c.get_latest_version(JSON_SUBJECT)
        expect(r.version == 1, f"get_latest_version after deleting version 2: want 1, got {r.version!r}")
        expect_error("get_version of the deleted version", lambda: c.get_version(JSON_SUBJECT, 2), 404, 40402)

    run.check("delete_version", delete_version)

    def soft_delete(c: SchemaRegistryClient) -> None:
        got = c.delete_subject(JSON_SUBJECT)
        # Confluent answers with the versions this call deleted: the live ones (version 2 was
        # soft-deleted already).
        expect(got == [1], f"delete_subject({JSON_SUBJECT}) (soft): want [1], the versions it "
               f"deleted, got {got!r}")
        expect_error("get_versions of a soft-deleted subject",
                     lambda: c.get_versions(JSON_SUBJECT), 404, 40401)
        expect_error("get_latest_version of a soft-deleted subject",
                     lambda: c.get_latest_version(JSON_SUBJECT), 404, 40401)
        subjects = c.get_subjects()
        expect(subjects == [AVRO_SUBJECT], f"get_subjects after the soft delete: want "
               f"[{AVRO_SUBJECT!r}], got {subjects!r}")
        subjects = c.get_subjects(deleted=True)
        expect(sorted(subjects) == sorted([JSON_SUBJECT, AVRO_SUBJECT]),
               f"get_subjects(deleted=True): want both subjects, got {subjects!r}")
        versions = c.get_versions(JSON_SUBJECT, deleted=True)
        expect(versions == [1, 2], f"get_versions(deleted=True): want [1, 2], got {versions!r}")

    run.check("delete_subject soft", soft_delete)

    def hard_delete(c: SchemaRegistryClient) -> None:
        got = c.delete_subject(JSON_SUBJECT, permanent=True)
        expect(got == [1, 2], f"delete_subject({JSON_SUBJECT}, permanent=True): want [1, 2], got {got!r}")
        expect_error("get_versions(deleted=True) of a permanently deleted subject",
                     lambda: c.get_versions(JSON_SUBJECT, deleted=True), 404, 40401)
        subjects = c.get_subjects(deleted=True)
        expect(subjects == [AVRO_SUBJECT], f"get_subjects(deleted=True) after the permanent "
               f"delete: want [{AVRO_SUBJECT!r}], got {subjects!r}")

    run.check("delete_subject permanent", hard_delete)

    def deleted_404(c: SchemaRegistryClient) -> None:
        expect_error("get_latest_version of a deleted subject",
                     lambda: c.get_latest_version(JSON_SUBJECT), 404, 40401)
        expect_error("get_version of a deleted subject",
                     lambda: c.get_version(JSON_SUBJECT, 1), 404, 40401)
        expect_error("get_versions of a deleted subject",
                     lambda: c.get_versions(JSON_SUBJECT), 404, 40401)

    run.check("get on the deleted subject is 404 with error_code 40401", deleted_404)

    def register_afresh(c: SchemaRegistryClient) -> None:
        got = c.register_schema(JSON_SUBJECT, json_schema(ORDER_PLACED))
        expect(got == ids["json"], f"register_schema after the permanent delete: want the "
               f"schema's id {ids['json']} (ids are global), got {got!r}")
        versions = c.get_versions(JSON_SUBJECT)
        expect(versions == [1], f"get_versions: want [1], got {versions!r}")

    run.check("register_schema after the permanent delete starts at version 1", register_afresh)

    # Compatibility failures last: these need the JSON Schema and Avro compatibility checks.

    def breaking_json(c: SchemaRegistryClient) -> None:
        ok = c.test_compatibility(JSON_SUBJECT, json_schema(order_placed_breaking()))
        expect(ok is False, "test_compatibility of a new REQUIRED property under BACKWARD: "
               f"want False, got {ok!r}")
        e = expect_error("register_schema of a new REQUIRED property under BACKWARD",
                         lambda: c.register_schema(JSON_SUBJECT, json_schema(order_placed_breaking())),
                         409, 409)
        expect(bool(e.error_message), "the 409 has no message")
        versions = c.get_versions(JSON_SUBJECT)
        expect(versions == [1], f"the rejected schema made a version: {versions!r}")

    run.check("test_compatibility incompatible json is False, and registering it is 409", breaking_json)

    def breaking_avro(c: SchemaRegistryClient) -> None:
        ok = c.test_compatibility(AVRO_SUBJECT, avro_schema(payment_captured_breaking()))
        expect(ok is False, "test_compatibility of a field without a default under FULL: "
               f"want False, got {ok!r}")
        e = expect_error("register_schema of a field without a default under FULL",
                         lambda: c.register_schema(AVRO_SUBJECT, avro_schema(payment_captured_breaking())),
                         409, 409)
        expect(bool(e.error_message), "the 409 has no message")
        versions = c.get_versions(AVRO_SUBJECT)
        expect(versions == [1, 2], f"the rejected schema made a version: {versions!r}")

    run.check("test_compatibility incompatible avro is False, and registering it is 409", breaking_avro)

    print("schema registry client: every check passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} REGISTRY_URL   (http://127.0.0.1:PORT/registry)")
    try:
        main(sys.argv[1])
    except Failure as failure:
        print(f"FAILED {failure}", file=sys.stderr)
        sys.exit(1)
