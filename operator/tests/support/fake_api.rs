//! An in-memory Kubernetes API behind kube's tower-test mock service: objects are stored by
//! path, server-side apply and merge patches are applied, and every request is logged.
//!
//! Where the reconcilers' correctness depends on it, it answers as a real API server does: a
//! replace (PUT) whose `metadata.resourceVersion` is not the stored one is 409 Conflict, a
//! create (POST) of a name that exists is 409 AlreadyExists, and every write gives the object a
//! new resourceVersion. `write_after_read` makes another writer change an object right after
//! the reconciler read it. Every request is authorized against the operator's RBAC
//! (`postern_operator::rbac`): what it does not grant is 403 Forbidden.
//!
//! Server-side apply tracks field managers as the API server does (lists are atomic here): an
//! apply sets the fields it names and removes those its manager set before and no longer names
//! (unless another manager owns them too), leaves fields of other managers alone, and, without
//! `force`, is 409 Conflict when it would change a field another manager owns. `edit` changes an
//! object as another manager (`kubectl scale`, an autoscaler) would. JSON patches (RFC 6902,
//! with `test`) are applied as such (kube's finalizer helper sends them); deleting an object
//! with finalizers only marks it (`deletionTimestamp`), and it goes once its last finalizer is
//! removed.
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
    /// Paths another writer changes right after their next GET.
    raced: Arc<Mutex<Vec<String>>>,
    /// Paths this client's requests to fail, and how.
    failures: Arc<Mutex<BTreeMap<String, Failure>>>,
    /// Per object path, per field manager, the fields it owns.
    owners: Arc<Mutex<BTreeMap<String, Owners>>>,
}

type Owners = BTreeMap<String, std::collections::BTreeSet<String>>;

/// How requests to a path fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 401: the client's token was revoked.
    Unauthorized,
    /// 403: the client's permission was removed.
    Forbidden,
    /// No answer at all.
    Hang,
}

impl FakeApi {
    /// A client whose requests this fake answers.
    pub fn start() -> (Client, FakeApi) {
        FakeApi::default().serve()
    }

    /// Another client of the same API server (another replica): it sees the same objects, and
    /// has its own log and failures.
    pub fn second_client(&self) -> (Client, FakeApi) {
        FakeApi {
            objects: self.objects.clone(),
            version: self.version.clone(),
            owners: self.owners.clone(),
            ..FakeApi::default()
        }
        .serve()
    }

    fn serve(self) -> (Client, FakeApi) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let failure = server
                        .failures
                        .lock()
                        .unwrap()
                        .get(request.uri().path())
                        .copied();
                    let response = match failure {
                        Some(Failure::Hang) => {
                            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                            return;
                        }
                        Some(Failure::Unauthorized) => {
                            status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
                        }
                        Some(Failure::Forbidden) => status(
                            StatusCode::FORBIDDEN,
                            "Forbidden",
                            "forbidden: the permission was removed",
                        ),
                        None => server.handle(request).await,
                    };
                    respond.send_response(response);
                });
            }
        });
        (Client::new(service, "default"), self)
    }

    /// Changes the object at `path` with a JSON merge patch as field manager `manager` would.
    pub fn edit(&self, path: &str, manager: &str, patch: Value) {
        let mut objects = self.objects.lock().unwrap();
        let object = objects.get_mut(path).expect("object to edit");
        merge(object, &patch);
        object["metadata"]["resourceVersion"] = json!(self.next_version().to_string());
        let mut owners = self.owners.lock().unwrap();
        take_fields(
            owners.entry(path.into()).or_default(),
            manager,
            &leaves(&patch),
        );
    }

    /// From now on, this client's requests to `path` fail with `failure`.
    pub fn fail(&self, path: &str, failure: Failure) {
        self.failures.lock().unwrap().insert(path.into(), failure);
    }

    /// Stores `object` at `path` (as if created earlier).
    pub fn put(&self, path: &str, mut object: Value) {
        if object["metadata"]["resourceVersion"].is_null() {
            object["metadata"]["resourceVersion"] = json!(self.next_version().to_string());
        }
        self.objects.lock().unwrap().insert(path.into(), object);
    }

    /// After the next GET of `path`, another writer changes the object (a new resourceVersion
    /// and an annotation), as happens when two writers race.
    pub fn write_after_read(&self, path: &str) {
        self.raced.lock().unwrap().push(path.into());
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    /// Removes the object at `path` (as if someone deleted it).
    pub fn delete(&self, path: &str) {
        self.objects.lock().unwrap().remove(path);
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
        let query = request.uri().query().unwrap_or("").to_string();
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(&format!("{name}=")))
                .map(String::from)
        };
        let manager = param("fieldManager").unwrap_or_else(|| "unknown".into());
        let force = param("force").as_deref() == Some("true");
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        self.log.lock().unwrap().push(format!("{method} {path}"));
        let watch = request_is_watch(&query);
        if let Some((group, resource, verb)) = authorization(&method, &path, watch)
            && !postern_operator::rbac::allows_in_own_namespace(&group, &resource, verb)
        {
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("cannot {verb} resource {resource:?} in API group {group:?}"),
            );
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let writes = method != Method::GET;
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
                if let Some(object) = objects.get(&key).cloned() {
                    let mut raced = self.raced.lock().unwrap();
                    if let Some(at) = raced.iter().position(|p| *p == key) {
                        raced.remove(at);
                        let mut changed = object.clone();
                        changed["metadata"]["annotations"]["example.com/other-writer"] = json!("1");
                        changed["metadata"]["resourceVersion"] =
                            json!(self.next_version().to_string());
                        objects.insert(key.clone(), changed);
                    }
                    return ok(object);
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
                let updated = if content_type.starts_with("application/json-patch") {
                    let Some(mut object) = current else {
                        return status(StatusCode::NOT_FOUND, "NotFound", "not found");
                    };
                    let ops: json_patch::Patch = match serde_json::from_value(body) {
                        Ok(ops) => ops,
                        Err(err) => {
                            return status(StatusCode::BAD_REQUEST, "BadRequest", &err.to_string());
                        }
                    };
                    // As the API server's JSON patch does, a `test` for null passes on a
                    // missing path.
                    let ops = json_patch::Patch(
                        ops.0
                            .into_iter()
                            .filter(|op| match op {
                                json_patch::PatchOperation::Test(test) => {
                                    !(test.value.is_null()
                                        && object.pointer(test.path.as_str()).is_none())
                                }
                                _ => true,
                            })
                            .collect(),
                    );
                    if let Err(err) = json_patch::patch(&mut object, &ops) {
                        return status(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            &err.to_string(),
                        );
                    }
                    object
                } else if content_type.starts_with("application/apply-patch") {
                    let mut owners = self.owners.lock().unwrap();
                    let owners = owners.entry(key.clone()).or_default();
                    match server_side_apply(
                        current.unwrap_or(json!({})),
                        &body,
                        owners,
                        &manager,
                        force,
                    ) {
                        Ok(object) => object,
                        Err(conflicts) => {
                            return status(
                                StatusCode::CONFLICT,
                                "Conflict",
                                &format!(
                                    "Apply failed with {} conflicts: {}",
                                    conflicts.len(),
                                    conflicts.join(", ")
                                ),
                            );
                        }
                    }
                } else {
                    let Some(mut object) = current else {
                        return status(StatusCode::NOT_FOUND, "NotFound", "not found");
                    };
                    if subresource_status {
                        object["status"] = body["status"].clone();
                    } else {
                        merge(&mut object, &body);
                        let mut owners = self.owners.lock().unwrap();
                        take_fields(
                            owners.entry(key.clone()).or_default(),
                            &manager,
                            &leaves(&body),
                        );
                    }
                    object
                };
                let mut updated = updated;
                if updated["metadata"]["uid"].is_null() {
                    updated["metadata"]["uid"] = json!(format!("uid-{version}"));
                }
                updated["metadata"]["resourceVersion"] = json!(version.to_string());
                if is_finished(&updated) {
                    objects.remove(&key);
                } else {
                    objects.insert(key, updated.clone());
                }
                ok(updated)
            }
            Method::PUT => {
                let Some(current) = objects.get(&key) else {
                    return status(StatusCode::NOT_FOUND, "NotFound", "not found");
                };
                let expected = &body["metadata"]["resourceVersion"];
                if !expected.is_null() && *expected != current["metadata"]["resourceVersion"] {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
                let mut object = body;
                object["metadata"]["uid"] = current["metadata"]["uid"].clone();
                if let Some(status) = current.get("status") {
                    object["status"] = status.clone();
                }
                object["metadata"]["resourceVersion"] = json!(self.next_version().to_string());
                objects.insert(key, object.clone());
                ok(object)
            }
            Method::POST => {
                let version = self.next_version();
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("event-{version}"));
                let path = format!("{key}/{name}");
                if objects.contains_key(&path) {
                    return status(StatusCode::CONFLICT, "AlreadyExists", "already exists");
                }
                let mut body = body;
                body["metadata"]["resourceVersion"] = json!(version.to_string());
                if body["metadata"]["uid"].is_null() {
                    body["metadata"]["uid"] = json!(format!("uid-{version}"));
                }
                objects.insert(path, body.clone());
                let mut response = ok(body);
                *response.status_mut() = StatusCode::CREATED;
                response
            }
            Method::DELETE => match objects.get_mut(&key) {
                Some(object) if has_finalizers(object) => {
                    if object["metadata"]["deletionTimestamp"].is_null() {
                        object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                    }
                    ok(object.clone())
                }
                Some(_) => ok(objects.remove(&key).unwrap_or_default()),
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

fn request_is_watch(query: &str) -> bool {
    query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
}

/// `(group, resource, verb)` of a request, as the API server's authorizer sees it.
fn authorization(
    method: &Method,
    path: &str,
    watch: bool,
) -> Option<(String, String, &'static str)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _, rest @ ..] => (String::new(), rest),
        ["apis", group, _, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _] => (resource.to_string(), true),
        [resource, _, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let verb = match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((group, resource, verb))
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

fn has_finalizers(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// Marked for deletion and no finalizer left: the API server removes it.
fn is_finished(object: &Value) -> bool {
    !object["metadata"]["deletionTimestamp"].is_null() && !has_finalizers(object)
}

/// Separates the names in a field path (label keys hold dots and slashes).
const SEP: char = '\u{1f}';

/// Fields the API server tracks no owner for.
const UNOWNED: [&str; 7] = [
    "apiVersion",
    "kind",
    "metadata\u{1f}name",
    "metadata\u{1f}namespace",
    "metadata\u{1f}uid",
    "metadata\u{1f}resourceVersion",
    "metadata\u{1f}managedFields",
];

/// The leaf fields of `value` (objects are walked, lists and scalars are leaves) with their
/// values, by path; `status` is the status subresource's, not the object's.
fn leaves(value: &Value) -> BTreeMap<String, Value> {
    fn walk(value: &Value, path: String, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(fields) if !fields.is_empty() => {
                for (name, child) in fields {
                    let child_path = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}{SEP}{name}")
                    };
                    if child_path != "status" && !UNOWNED.contains(&child_path.as_str()) {
                        walk(child, child_path, out);
                    }
                }
            }
            Value::Null => {}
            leaf => {
                out.insert(path, leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(value, String::new(), &mut out);
    out
}

fn field<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split(SEP).try_fold(value, |v, name| v.get(name))
}

fn set_field(value: &mut Value, path: &str, leaf: Value) {
    let mut at = value;
    for name in path.split(SEP) {
        if !at.is_object() {
            *at = json!({});
        }
        at = &mut at[name];
    }
    *at = leaf;
}

fn remove_field(value: &mut Value, path: &str) {
    let (parent, name) = match path.rsplit_once(SEP) {
        Some((parent, name)) => (parent, name),
        None => ("", path),
    };
    let parent = if parent.is_empty() {
        Some(value)
    } else {
        parent.split('.').try_fold(value, |v, n| v.get_mut(n))
    };
    if let Some(Value::Object(fields)) = parent {
        fields.remove(name);
    }
}

/// `manager` now owns `fields`; any other manager that owned one loses it only if its value
/// changed (shared ownership of equal values is not modelled: the last writer owns).
fn take_fields(owners: &mut Owners, manager: &str, fields: &BTreeMap<String, Value>) {
    for (other, owned) in owners.iter_mut() {
        if other != manager {
            owned.retain(|f| !fields.contains_key(f));
        }
    }
    owners
        .entry(manager.into())
        .or_default()
        .extend(fields.keys().cloned());
}

/// Server-side apply of `applied` by `manager` onto `current`: the result, or the conflicts.
fn server_side_apply(
    mut current: Value,
    applied: &Value,
    owners: &mut Owners,
    manager: &str,
    force: bool,
) -> Result<Value, Vec<String>> {
    let fields = leaves(applied);
    let conflicts: Vec<String> = owners
        .iter()
        .filter(|(other, _)| other.as_str() != manager)
        .flat_map(|(other, owned)| {
            let current = &current;
            fields
                .iter()
                .filter(move |(f, v)| owned.contains(*f) && field(current, f) != Some(*v))
                .map(move |(f, _)| format!("conflict with {other:?}: .{}", f.replace(SEP, ".")))
        })
        .collect();
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let previously = owners.get(manager).cloned().unwrap_or_default();
    for gone in previously.iter().filter(|f| !fields.contains_key(*f)) {
        let shared = owners
            .iter()
            .any(|(other, owned)| other != manager && owned.contains(gone));
        if !shared {
            remove_field(&mut current, gone);
        }
    }
    for (f, v) in &fields {
        set_field(&mut current, f, v.clone());
    }
    for name in ["apiVersion", "kind"] {
        current[name] = applied[name].clone();
    }
    for name in ["name", "namespace"] {
        if !applied["metadata"][name].is_null() {
            current["metadata"][name] = applied["metadata"][name].clone();
        }
    }
    owners.insert(manager.into(), fields.keys().cloned().collect());
    Ok(current)
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
