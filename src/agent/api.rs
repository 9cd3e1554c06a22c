//! IPA's REST API on the wire (docs/agent-api.md#routes): every route with and without the `/v1` prefix, the
//! five-key result object, `{faultcode, faultstring}` errors with IPA's status codes and texts,
//! and the `agent_token` query parameter on the protected routes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{extensions, Agent};
use crate::errors::AgentError;

type Q = Query<HashMap<String, String>>;

/// The router, for `axum::serve` (or a TLS acceptor).
pub(crate) fn router(agent: Arc<Agent>) -> Router {
    let mut r = Router::new()
        .route("/", get(root))
        .route("/v1", get(v1))
        .route("/v1/", get(v1));
    for prefix in ["/v1", ""] {
        r = r
            .route(&format!("{prefix}/status"), get(status))
            .route(&format!("{prefix}/status/"), get(status))
            .route(&format!("{prefix}/commands"), get(list).post(post))
            .route(&format!("{prefix}/commands/"), get(list).post(post))
            .route(&format!("{prefix}/commands/{{id}}"), get(one));
    }
    r.fallback(not_found).with_state(agent)
}

/// `{"faultcode": ..., "faultstring": ...}` with `status`.
pub(crate) fn fault(status: StatusCode, faultstring: &str) -> Response {
    let code = if status.is_server_error() {
        "Server"
    } else {
        "Client"
    };
    (
        status,
        Json(json!({"faultcode": code, "faultstring": faultstring})),
    )
        .into_response()
}

fn agent_fault(e: &AgentError) -> Response {
    fault(
        StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_string(),
    )
}

fn host_url(headers: &HeaderMap, agent: &Agent) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("{}://{host}", agent.scheme().as_str())
}

fn docs_link() -> Value {
    json!({"href": "https://docs.openstack.org/ironic-python-agent/", "rel": "describedby", "type": "text/html"})
}

async fn root(State(a): State<Arc<Agent>>, headers: HeaderMap) -> Json<Value> {
    let base = host_url(&headers, &a);
    let v1 =
        json!({"id": "v1", "links": [{"href": format!("{base}/v1"), "rel": "self"}, docs_link()]});
    Json(json!({
        "name": "OpenStack Ironic Python Agent API",
        "description": "Ironic Python Agent is a provisioning agent for OpenStack Ironic",
        "versions": [v1],
        "default_version": v1,
    }))
}

async fn v1(State(a): State<Arc<Agent>>, headers: HeaderMap) -> Json<Value> {
    let base = host_url(&headers, &a);
    let links = |what: &str| {
        json!([{"href": format!("{base}/v1/{what}"), "rel": "self"},
               {"href": format!("{base}/{what}"), "rel": "bookmark"}])
    };
    Json(json!({
        "commands": links("commands"),
        "status": links("status"),
        "media_types": [{"base": "application/json",
                         "type": "application/vnd.openstack.ironic-python-agent.v1+json"}],
        "id": "v1",
        "links": [{"href": format!("{base}/v1"), "rel": "self"}, docs_link()],
    }))
}

async fn status(State(a): State<Arc<Agent>>) -> Json<Value> {
    Json(json!({"started_at": a.started_at, "version": super::VERSION}))
}

fn token_ok(a: &Agent, q: &HashMap<String, String>) -> bool {
    a.token_ok(q.get("agent_token").map(String::as_str))
}

fn bad_token() -> Response {
    fault(StatusCode::UNAUTHORIZED, "401 Unauthorized: Token invalid.")
}

fn wants_wait(q: &HashMap<String, String>) -> bool {
    q.get("wait")
        .is_some_and(|w| w.eq_ignore_ascii_case("true"))
}

async fn list(State(a): State<Arc<Agent>>, Query(q): Q) -> Response {
    if !token_ok(&a, &q) {
        return bad_token();
    }
    let commands: Vec<Value> = a.engine.all().iter().map(|r| r.to_json()).collect();
    Json(json!({"commands": commands})).into_response()
}

async fn one(State(a): State<Arc<Agent>>, Path(id): Path<String>, Query(q): Q) -> Response {
    if !token_ok(&a, &q) {
        return bad_token();
    }
    match a.engine.get(&id) {
        Some(rec) => {
            if wants_wait(&q) {
                rec.wait().await;
            }
            Json(rec.to_json()).into_response()
        }
        None => agent_fault(&AgentError::NotFound {
            kind: "Command Result".into(),
            id,
        }),
    }
}

async fn post(State(a): State<Arc<Agent>>, Query(q): Q, body: Bytes) -> Response {
    if !token_ok(&a, &q) {
        return bad_token();
    }
    // Parsed as JSON whatever the Content-Type says, as IPA does.
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return fault(
                StatusCode::BAD_REQUEST,
                &format!("400 Bad Request: Failed to decode JSON object: {e}"),
            )
        }
    };
    let (Some(name), Some(params)) = (
        v.get("name").and_then(Value::as_str),
        v.get("params").and_then(Value::as_object),
    ) else {
        return fault(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: Missing or invalid name or params",
        );
    };
    let (name, params) = (name.to_string(), params.clone());
    // The name's form is checked before the busy rule, as IPA splits it first.
    if !name.contains('.') {
        return agent_fault(&AgentError::InvalidCommand(
            "Command name must be of the form <extension>.<name>".into(),
        ));
    }
    tracing::info!(command = %name, "command received");
    let agent = Arc::clone(&a);
    let heartbeat = Arc::clone(&a);
    let res = a
        .engine
        .dispatch(
            &name,
            || extensions::resolve(&agent, &name, params),
            move || heartbeat.heartbeat_now.notify_one(),
        )
        .await;
    match res {
        Ok(rec) => {
            if wants_wait(&q) {
                rec.wait().await;
            }
            Json(rec.to_json()).into_response()
        }
        Err(e) => agent_fault(&e),
    }
}

async fn not_found() -> Response {
    fault(
        StatusCode::NOT_FOUND,
        "404 Not Found: The requested URL was not found on the server.",
    )
}
