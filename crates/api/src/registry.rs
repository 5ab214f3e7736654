//! The schema registry's REST API under `/registry`: the Confluent Schema Registry's paths,
//! bodies, status codes and `error_code`s, so an existing registry client pointed at
//! `http://host:7070/registry` works unchanged. Replies are
//! `application/vnd.schemaregistry.v1+json`; errors are `{"error_code","message"}`.
//!
//! Also Gearbox's own topic policy: `GET/PUT /v1/topics/{topic}/schema-policy`.

use crate::{Shared, blocking};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gearbox_core::registry::{
    Compatibility, Registry, RegistryError, SchemaType, StoredSchema, Version, VersionRef,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// Confluent's media type.
pub const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Params = Query<HashMap<String, String>>;

/// A registry reply.
fn reply(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, MEDIA_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// A registry error in Confluent's shape.
struct Fail(RegistryError);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::BAD_REQUEST);
        reply(
            status,
            &json!({"error_code": self.0.code(), "message": self.0.to_string()}),
        )
    }
}

impl From<RegistryError> for Fail {
    fn from(e: RegistryError) -> Self {
        Fail(e)
    }
}

type Result<T> = std::result::Result<T, Fail>;

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The body of a register, lookup or compatibility request.
struct SchemaBody {
    ty: SchemaType,
    schema: String,
}

fn schema_body(raw: std::result::Result<Bytes, BytesRejection>) -> Result<SchemaBody> {
    let bytes = raw.map_err(|e| Fail(RegistryError::InvalidSchema(e.body_text())))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Fail(RegistryError::InvalidSchema(format!(
            "the body is not JSON: {e}"
        )))
    })?;
    let schema = v["schema"]
        .as_str()
        .ok_or_else(|| {
            Fail(RegistryError::InvalidSchema(
                "the body needs a string `schema`".into(),
            ))
        })?
        .to_string();
    if v["references"].as_array().is_some_and(|r| !r.is_empty()) {
        return Err(Fail(RegistryError::InvalidSchema(
            "schema references are not supported yet".into(),
        )));
    }
    Ok(SchemaBody {
        ty: SchemaType::parse(v["schemaType"].as_str())?,
        schema,
    })
}

fn version_json(subject: &str, v: Version, schema: &StoredSchema) -> Value {
    let mut out = json!({
        "subject": subject,
        "version": v.version,
        "id": schema.id,
        "schema": schema.text,
    });
    if schema.ty != SchemaType::Avro {
        out["schemaType"] = json!(schema.ty.as_str());
    }
    out
}

/// Runs a registry call on a blocking thread (writes fsync).
async fn run<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&Registry) -> std::result::Result<T, RegistryError> + Send + 'static,
) -> Result<T> {
    let broker = s.0.broker.clone();
    let out = blocking(move || Ok(f(broker.registry()))).await;
    match out {
        Ok(r) => r.map_err(Fail),
        Err(e) => Err(Fail(RegistryError::Store(e.message))),
    }
}

async fn root() -> Response {
    reply(StatusCode::OK, &json!({}))
}

async fn types() -> Response {
    reply(StatusCode::OK, &json!(["JSON", "AVRO"]))
}

async fn subjects(s: Shared, Query(q): Params) -> Result<Response> {
    let deleted = flag(&q, "deleted");
    let list = run(&s, move |r| Ok(r.subjects(deleted))).await?;
    Ok(reply(StatusCode::OK, &json!(list)))
}

async fn versions(s: Shared, Path(subject): Path<String>, Query(q): Params) -> Result<Response> {
    let deleted = flag(&q, "deleted");
    let list = run(&s, move |r| r.versions(&subject, deleted)).await?;
    Ok(reply(StatusCode::OK, &json!(list)))
}

async fn register(
    s: Shared,
    Path(subject): Path<String>,
    raw: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = schema_body(raw)?;
    let (id, _) = run(&s, move |r| r.register(&subject, body.ty, &body.schema)).await?;
    Ok(reply(StatusCode::OK, &json!({"id": id})))
}

async fn version(
    s: Shared,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response> {
    let v = VersionRef::parse(&v)?;
    let deleted = flag(&q, "deleted");
    let out = run(&s, move |r| {
        let (v, schema) = r.version(&subject, v, deleted)?;
        Ok(version_json(&subject, v, &schema))
    })
    .await?;
    Ok(reply(StatusCode::OK, &out))
}

async fn version_schema(s: Shared, Path((subject, v)): Path<(String, String)>) -> Result<Response> {
    let v = VersionRef::parse(&v)?;
    let text = run(&s, move |r| {
        Ok(r.version(&subject, v, false)?.1.text.clone())
    })
    .await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, MEDIA_TYPE)], text).into_response())
}

async fn delete_version(
    s: Shared,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response> {
    let v = VersionRef::parse(&v)?;
    let permanent = flag(&q, "permanent");
    let n = run(&s, move |r| r.delete_version(&subject, v, permanent)).await?;
    Ok(reply(StatusCode::OK, &json!(n)))
}

async fn lookup(
    s: Shared,
    Path(subject): Path<String>,
    Query(q): Params,
    raw: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = schema_body(raw)?;
    let deleted = flag(&q, "deleted");
    let out = run(&s, move |r| {
        let (v, schema) = r.lookup(&subject, body.ty, &body.schema, deleted)?;
        Ok(version_json(&subject, v, &schema))
    })
    .await?;
    Ok(reply(StatusCode::OK, &out))
}

async fn delete_subject(
    s: Shared,
    Path(subject): Path<String>,
    Query(q): Params,
) -> Result<Response> {
    let permanent = flag(&q, "permanent");
    let list = run(&s, move |r| r.delete_subject(&subject, permanent)).await?;
    Ok(reply(StatusCode::OK, &json!(list)))
}

fn id_param(id: &str) -> Result<u64> {
    id.parse().map_err(|_| Fail(RegistryError::SchemaNotFound))
}

async fn schema_by_id(s: Shared, Path(id): Path<String>) -> Result<Response> {
    let id = id_param(&id)?;
    let schema = run(&s, move |r| r.schema(id)).await?;
    let mut out = json!({"schema": schema.text});
    if schema.ty != SchemaType::Avro {
        out["schemaType"] = json!(schema.ty.as_str());
    }
    Ok(reply(StatusCode::OK, &out))
}

async fn schema_text_by_id(s: Shared, Path(id): Path<String>) -> Result<Response> {
    let id = id_param(&id)?;
    let schema = run(&s, move |r| r.schema(id)).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, MEDIA_TYPE)],
        schema.text.clone(),
    )
        .into_response())
}

async fn schema_versions(s: Shared, Path(id): Path<String>) -> Result<Response> {
    let id = id_param(&id)?;
    let usages = run(&s, move |r| {
        r.schema(id)?;
        Ok(r.usages(id))
    })
    .await?;
    let list: Vec<Value> = usages
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(reply(StatusCode::OK, &json!(list)))
}

async fn schema_subjects(s: Shared, Path(id): Path<String>) -> Result<Response> {
    let id = id_param(&id)?;
    let usages = run(&s, move |r| {
        r.schema(id)?;
        Ok(r.usages(id))
    })
    .await?;
    let mut subjects: Vec<String> = usages.into_iter().map(|(s, _)| s).collect();
    subjects.dedup();
    Ok(reply(StatusCode::OK, &json!(subjects)))
}

fn level_body(raw: std::result::Result<Bytes, BytesRejection>) -> Result<Compatibility> {
    let bytes = raw.map_err(|e| Fail(RegistryError::InvalidCompatibility(e.body_text())))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|_| Fail(RegistryError::InvalidCompatibility("not JSON".into())))?;
    let name = v["compatibility"]
        .as_str()
        .or_else(|| v["compatibilityLevel"].as_str())
        .unwrap_or_default();
    Ok(Compatibility::parse(name)?)
}

async fn get_config(s: Shared) -> Result<Response> {
    let level = run(&s, |r| r.level(None, true)).await?;
    Ok(reply(
        StatusCode::OK,
        &json!({"compatibilityLevel": level.as_str()}),
    ))
}

async fn put_config(
    s: Shared,
    raw: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let level = level_body(raw)?;
    run(&s, move |r| r.set_level(None, level)).await?;
    Ok(reply(
        StatusCode::OK,
        &json!({"compatibility": level.as_str()}),
    ))
}

async fn get_subject_config(
    s: Shared,
    Path(subject): Path<String>,
    Query(q): Params,
) -> Result<Response> {
    let default = flag(&q, "defaultToGlobal");
    let level = run(&s, move |r| r.level(Some(&subject), default)).await?;
    Ok(reply(
        StatusCode::OK,
        &json!({"compatibilityLevel": level.as_str()}),
    ))
}

async fn put_subject_config(
    s: Shared,
    Path(subject): Path<String>,
    raw: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let level = level_body(raw)?;
    run(&s, move |r| r.set_level(Some(&subject), level)).await?;
    Ok(reply(
        StatusCode::OK,
        &json!({"compatibility": level.as_str()}),
    ))
}

async fn delete_subject_config(s: Shared, Path(subject): Path<String>) -> Result<Response> {
    let old = run(&s, move |r| r.delete_level(&subject)).await?;
    Ok(reply(
        StatusCode::OK,
        &json!({"compatibilityLevel": old.as_str()}),
    ))
}

async fn compatibility(
    s: Shared,
    subject: String,
    version: Option<String>,
    q: HashMap<String, String>,
    raw: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let version = version.as_deref().map(VersionRef::parse).transpose()?;
    let body = schema_body(raw)?;
    let messages = run(&s, move |r| {
        r.test(&subject, version, body.ty, &body.schema)
    })
    .await?;
    let mut out = json!({"is_compatible": messages.is_empty()});
    if flag(&q, "verbose") {
        out["messages"] = json!(messages);
    }
    Ok(reply(StatusCode::OK, &out))
}

async fn compatibility_version(
    s: Shared,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
    raw: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    compatibility(s, subject, Some(v), q, raw).await
}

async fn compatibility_all(
    s: Shared,
    Path(subject): Path<String>,
    Query(q): Params,
    raw: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    compatibility(s, subject, None, q, raw).await
}

/// `GET /v1/topics/{topic}/schema-policy`.
pub(crate) async fn get_policy(
    s: Shared,
    crate::Path(topic): crate::Path<String>,
) -> crate::ApiResult {
    let broker = s.0.broker.clone();
    let t = topic.clone();
    blocking(move || broker.describe_topic(&t).map(drop)).await?;
    let strict = s.0.broker.registry().strict(&topic);
    crate::ok(
        StatusCode::OK,
        json!({"topic": topic, "require_schema": strict}),
    )
}

/// `PUT /v1/topics/{topic}/schema-policy` with `{"require_schema": bool}`.
pub(crate) async fn put_policy(
    s: Shared,
    crate::Path(topic): crate::Path<String>,
    headers: axum::http::HeaderMap,
    raw: std::result::Result<Bytes, BytesRejection>,
) -> crate::ApiResult {
    let v = crate::json_request(&headers, raw)?;
    let Some(strict) = v["require_schema"].as_bool() else {
        return Err(crate::error::ApiError::new(
            "invalid_argument",
            "`require_schema` must be true or false",
        )
        .field("require_schema"));
    };
    let broker = s.0.broker.clone();
    let t = topic.clone();
    blocking(move || {
        broker.describe_topic(&t)?;
        broker
            .registry()
            .set_strict(&t, strict)
            .map_err(|e| gearbox_core::broker::BrokerError::Internal(e.to_string()))
    })
    .await?;
    crate::ok(
        StatusCode::OK,
        json!({"topic": topic, "require_schema": strict}),
    )
}

/// The registry's routes, mounted under `/registry`.
pub(crate) fn routes() -> axum::Router<Arc<crate::AppState>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(types))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(schema_text_by_id))
        .route("/schemas/ids/{id}/versions", get(schema_versions))
        .route("/schemas/ids/{id}/subjects", get(schema_subjects))
        .route("/config", get(get_config).put(put_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility_version),
        )
}
