//! An in-memory Kubernetes API behind kube's tower-test mock service: objects are stored by
//! path, server-side apply and merge patches are applied, and every request is logged.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

#[derive(Clone, Default)]
pub struct FakeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    log: Arc<Mutex<Vec<String>>>,
    conflicts: Arc<Mutex<u32>>,
    version: Arc<Mutex<u64>>,
}

impl FakeApi {
    /// A client whose requests this fake answers.
    pub fn start() -> (Client, FakeApi) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeApi::default();
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = server.handle(request).await;
                respond.send_response(response);
            }
        });
        (Client::new(service, "default"), fake)
    }

    /// Stores `object` at `path` (as if created earlier).
    pub fn put(&self, path: &str, object: Value) {
        self.objects.lock().unwrap().insert(path.into(), object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    pub fn paths(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }

    /// `METHOD path` of every request so far, and forgets them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// The next `n` writes are answered 409 Conflict.
    pub fn conflict_next(&self, n: u32) {
        *self.conflicts.lock().unwrap() = n;
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        self.log.lock().unwrap().push(format!("{method} {path}"));
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let writes = method == Method::PATCH || method == Method::POST || method == Method::DELETE;
        if writes && !path.contains("/events") {
            let mut conflicts = self.conflicts.lock().unwrap();
            if *conflicts > 0 {
                *conflicts -= 1;
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                );
            }
        }
        let (key, subresource_status) = match path.strip_suffix("/status") {
            Some(key) => (key.to_string(), true),
            None => (path.clone(), false),
        };
        let mut objects = self.objects.lock().unwrap();
        match method {
            Method::GET => {
                if let Some(object) = objects.get(&key) {
                    return ok(object.clone());
                }
                let prefix = format!("{key}/");
                let items: Vec<Value> = objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                    .map(|(_, v)| v.clone())
                    .collect();
                if is_collection(&key) {
                    return ok(
                        json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": "1" }, "items": items }),
                    );
                }
                status(StatusCode::NOT_FOUND, "NotFound", "not found")
            }
            Method::PATCH => {
                let version = self.next_version();
                let current = objects.get(&key).cloned();
                let updated = if content_type.starts_with("application/apply-patch") {
                    let mut object = body;
                    if let Some(current) = &current {
                        if let Some(status) = current.get("status") {
                            object["status"] = status.clone();
                        }
                        object["metadata"]["uid"] = current["metadata"]["uid"].clone();
                    }
                    object
                } else {
                    let Some(mut object) = current else {
                        return status(StatusCode::NOT_FOUND, "NotFound", "not found");
                    };
                    if subresource_status {
                        object["status"] = body["status"].clone();
                    } else {
                        merge(&mut object, &body);
                    }
                    object
                };
                let mut updated = updated;
                if updated["metadata"]["uid"].is_null() {
                    updated["metadata"]["uid"] = json!(format!("uid-{version}"));
                }
                updated["metadata"]["resourceVersion"] = json!(version.to_string());
                objects.insert(key, updated.clone());
                ok(updated)
            }
            Method::POST => {
                let version = self.next_version();
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("event-{version}"));
                objects.insert(format!("{key}/{name}"), body.clone());
                let mut response = ok(body);
                *response.status_mut() = StatusCode::CREATED;
                response
            }
            Method::DELETE => match objects.remove(&key) {
                Some(object) => ok(object),
                None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
            },
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unsupported",
            ),
        }
    }

    fn next_version(&self) -> u64 {
        let mut version = self.version.lock().unwrap();
        *version += 1;
        *version
    }
}

/// A collection path ends with a plural resource name (`.../namespaces/x/secrets`).
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", _, "namespaces", _, _] | ["apis", _, _, "namespaces", _, _] => true,
        ["api", _, resource] | ["apis", _, _, resource] => *resource != "namespaces",
        _ => false,
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    target.as_object_mut().unwrap().remove(key);
                } else {
                    merge(&mut target[key], value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn ok(body: Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}
