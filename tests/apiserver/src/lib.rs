//! A fake Kubernetes API server on 127.0.0.1 for sensor's tests and
//! benchmarks: real HTTP/1.1, the parts of the API the sensor uses (pods:
//! list, watch with resourceVersion, get, merge and apply patch; Tetragon's
//! TracingPolicy and TracingPolicyNamespaced resources: list, watch and
//! status merge patch), and failures on demand.
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::channel::mpsc;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

type Body = BoxBody<Bytes, Infallible>;

/// The resources served: pods, and Tetragon's policy kinds.
pub const PODS: &str = "pods";
pub const TRACING_POLICIES: &str = "tracingpolicies";
pub const TRACING_POLICIES_NAMESPACED: &str = "tracingpoliciesnamespaced";

struct Watcher {
    resource: String,
    /// Pods only: the node the watch selects.
    node: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    /// Every change: (resourceVersion, type, resource, object), for watches
    /// that resume.
    log: Vec<(u64, &'static str, String, Value)>,
    watchers: Vec<Watcher>,
    failures: VecDeque<u16>,
    /// Pod name → the status codes its next patches fail with.
    pod_failures: BTreeMap<String, VecDeque<u16>>,
    patches: Vec<(String, String, Value)>,
    /// While set, connections are closed as soon as they are accepted: an
    /// API server that is down (or a load balancer with no backend).
    down: bool,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn key(resource: &str, obj: &Value) -> (String, String, String) {
    let m = &obj["metadata"];
    (
        resource.into(),
        m["namespace"].as_str().unwrap_or("").into(),
        m["name"].as_str().unwrap_or("").into(),
    )
}

fn node_of(pod: &Value) -> Option<&str> {
    pod["spec"]["nodeName"].as_str()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

impl State {
    fn record(&mut self, kind: &'static str, resource: &str, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.log.push((self.rv, kind, resource.into(), obj.clone()));
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": obj})));
        let node = node_of(&obj).map(String::from);
        self.watchers.retain(|w| {
            if w.resource != resource || (w.node.is_some() && w.node != node) {
                return !w.tx.is_closed();
            }
            w.tx.unbounded_send(line.clone()).is_ok()
        });
        obj
    }

    /// Adds or replaces an object; a changed spec bumps its generation, as
    /// the API server does.
    fn put(&mut self, resource: &str, mut obj: Value) -> Value {
        let k = key(resource, &obj);
        let (kind, generation) = match self.objects.get(&k) {
            Some(old) => {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = old["spec"] != obj["spec"];
                ("MODIFIED", if changed { g + 1 } else { g })
            }
            None => ("ADDED", 1),
        };
        if resource != PODS {
            obj["metadata"]["generation"] = json!(generation);
            if obj["metadata"]["uid"].is_null() {
                obj["metadata"]["uid"] = json!(format!("uid-{}-{}", k.2, self.rv + 1));
            }
        }
        let obj = self.record(kind, resource, obj);
        self.objects.insert(k, obj.clone());
        obj
    }
}

/// The resource a path names, with its namespace and name when it names
/// one object: `/api/v1/pods`, `/api/v1/namespaces/NS/pods/NAME`,
/// `/apis/cilium.io/v1alpha1/tracingpolicies[/NAME]`,
/// `/apis/cilium.io/v1alpha1[/namespaces/NS]/tracingpoliciesnamespaced[/NAME]`,
/// and `.../status`.
fn route<'a>(parts: &[&'a str]) -> Option<Route<'a>> {
    let rest = match parts {
        ["api", "v1", rest @ ..] => rest,
        ["apis", "cilium.io", "v1alpha1", rest @ ..] => rest,
        _ => return None,
    };
    let r = |resource, one, status| {
        Some(Route {
            resource,
            one,
            status,
        })
    };
    match rest {
        [res] => r(res, None, false),
        ["namespaces", _, res] => r(res, None, false),
        ["namespaces", ns, res, name] => r(res, Some((ns, name)), false),
        ["namespaces", ns, res, name, "status"] => r(res, Some((ns, name)), true),
        [res, name] => r(res, Some(("", name)), false),
        [res, name, "status"] => r(res, Some(("", name)), true),
        _ => None,
    }
}

/// What a request path names.
struct Route<'a> {
    resource: &'a str,
    /// (namespace, name) of one object; `None` for the collection.
    one: Option<(&'a str, &'a str)>,
    /// The status subresource.
    status: bool,
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_default()
}

fn status(code: u16, reason: &str) -> Response<Body> {
    status_with(code, reason, reason)
}

fn status_with(code: u16, reason: &str, message: &str) -> Response<Body> {
    let sc = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    full(
        sc,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}),
    )
}

fn query(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.replace("%3D", "=").replace("%3d", "="))
    })
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let node = query(&req, "fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName=").map(String::from));
    if method == Method::PATCH {
        if let Some(code) = state.lock().unwrap().failures.pop_front() {
            return Ok(status(code, "Injected"));
        }
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let Some(Route {
        resource,
        one,
        status: status_sub,
    }) = route(&parts)
    else {
        return Ok(status(404, "NotFound"));
    };
    if ![PODS, TRACING_POLICIES, TRACING_POLICIES_NAMESPACED].contains(&resource) {
        return Ok(status(404, "NotFound"));
    }
    let resource = resource.to_string();
    match (method, one) {
        (Method::GET, None) => {
            let watch = matches!(query(&req, "watch").as_deref(), Some("true" | "1"));
            let node = node.filter(|_| resource == PODS);
            let mut st = state.lock().unwrap();
            let wanted = |r: &str, o: &Value| {
                r == resource && (node.is_none() || node.as_deref() == node_of(o))
            };
            if !watch {
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((r, _, _), o)| wanted(r, o))
                    .map(|(_, o)| o.clone())
                    .collect();
                let body = json!({"kind": "List", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
                return Ok(full(StatusCode::OK, body));
            }
            let since: u64 = query(&req, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = mpsc::unbounded();
            for (_, kind, _, obj) in st
                .log
                .iter()
                .filter(|(rv, _, r, o)| *rv > since && wanted(r, o))
            {
                let _ = tx.unbounded_send(Bytes::from(format!(
                    "{}\n",
                    json!({"type": kind, "object": obj})
                )));
            }
            st.watchers.push(Watcher {
                resource: resource.clone(),
                node,
                tx,
            });
            let body = BodyExt::boxed(StreamBody::new(
                rx.map(|b| Ok::<_, Infallible>(Frame::data(b))),
            ));
            Ok(Response::builder()
                .header("content-type", "application/json")
                .body(body)
                .unwrap_or_default())
        }
        (Method::GET, Some((ns, name))) => {
            let st = state.lock().unwrap();
            Ok(match st.objects.get(&(resource, ns.into(), name.into())) {
                Some(p) => full(StatusCode::OK, p.clone()),
                None => status(404, "NotFound"),
            })
        }
        (Method::PATCH, Some((ns, name))) => {
            let ctype = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let (ns, name) = (ns.to_string(), name.to_string());
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let Ok(mut patch) = serde_json::from_slice::<Value>(&body) else {
                return Ok(status(400, "BadRequest"));
            };
            if !(ctype.contains("merge-patch") || ctype.contains("apply-patch")) {
                return Ok(status(415, "UnsupportedMediaType"));
            }
            // The status subresource changes the status only; the object
            // itself never does.
            match (status_sub, resource == PODS) {
                (true, false) => patch = json!({"status": patch["status"].clone()}),
                (false, false) => {
                    if let Some(o) = patch.as_object_mut() {
                        o.remove("status");
                    }
                }
                (true, true) => return Ok(status(404, "NotFound")),
                (false, true) => {}
            }
            let mut st = state.lock().unwrap();
            let k = (resource.clone(), ns.clone(), name.clone());
            if let Some(code) = st.pod_failures.get_mut(&name).and_then(|q| q.pop_front()) {
                // Real refusals name the object, as this one does.
                let msg = format!("pods \"{name}\" is refused (injected {code})");
                return Ok(status_with(code, "Injected", &msg));
            }
            let Some(mut obj) = st.objects.get(&k).cloned() else {
                return Ok(status(404, "NotFound"));
            };
            // A uid in the patch is a precondition, as the API server
            // treats it: the object must be the one the client saw.
            let want = patch["metadata"]["uid"].as_str().map(String::from);
            let have = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
            if let Some(want) = want.filter(|w| *w != have) {
                let msg = format!("Operation cannot be fulfilled on {resource} \"{name}\": Precondition failed: UID in precondition: {want}, UID in object meta: {have}");
                return Ok(status_with(409, "Conflict", &msg));
            }
            st.patches.push((ns, name, patch.clone()));
            merge(&mut obj, &patch);
            let obj = st.record("MODIFIED", &resource, obj);
            st.objects.insert(k, obj.clone());
            Ok(full(StatusCode::OK, obj))
        }
        _ => Ok(status(405, "MethodNotAllowed")),
    }
}

impl FakeApi {
    /// Serves on a random loopback port from a thread of its own.
    pub fn start() -> FakeApi {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    if st.lock().unwrap().down {
                        drop(stream);
                        continue;
                    }
                    let st = st.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        FakeApi { addr, state }
    }

    /// Adds (or replaces) a pod, as the scheduler and kubelet would.
    pub fn add_pod(&self, pod: Value) {
        self.state.lock().unwrap().put(PODS, pod);
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<Value> {
        self.object(PODS, ns, name)
    }

    /// Creates or updates an object of `resource` (as `kubectl apply`).
    pub fn put(&self, resource: &str, obj: Value) -> Value {
        self.state.lock().unwrap().put(resource, obj)
    }

    /// Deletes an object (as `kubectl delete`).
    pub fn delete(&self, resource: &str, ns: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        if let Some(obj) = st
            .objects
            .remove(&(resource.into(), ns.into(), name.into()))
        {
            st.record("DELETED", resource, obj);
        }
    }

    /// An object of `resource` (`ns` empty for cluster-scoped kinds).
    pub fn object(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&(resource.into(), ns.into(), name.into()))
            .cloned()
    }

    /// The next patches fail with these status codes, in order.
    pub fn fail_next(&self, codes: &[u16]) {
        self.state.lock().unwrap().failures.extend(codes);
    }

    /// The next patches of the pod named `name` fail with these codes.
    pub fn fail_pod(&self, name: &str, codes: &[u16]) {
        self.state
            .lock()
            .unwrap()
            .pod_failures
            .entry(name.into())
            .or_default()
            .extend(codes);
    }

    /// Takes the server down (new connections are closed at once) or
    /// brings it back.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Drops the failures not used yet.
    pub fn clear_failures(&self) {
        let mut st = self.state.lock().unwrap();
        st.failures.clear();
        st.pod_failures.clear();
    }

    /// Every patch that landed: (namespace, name, body).
    pub fn patches(&self) -> Vec<(String, String, Value)> {
        self.state.lock().unwrap().patches.clone()
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: test\n",
            self.addr
        );
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }
}

/// A pod as the API server returns it, with one running container.
pub fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    node: &str,
    container_id: &str,
    labels: Value,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": uid, "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{ns}-web-5d8f7c9b4d"), "uid": "rs", "controller": true}]
        },
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.example/app:1.0"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "app", "image": "registry.example/app:1.0", "imageID": "registry.example/app@sha256:0123",
            "containerID": format!("containerd://{container_id}"), "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-25T10:00:00Z"}}
        }]}
    })
}
