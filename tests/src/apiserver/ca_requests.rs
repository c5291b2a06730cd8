//! What the control plane's CA asks of the API server, beside the lists and watches: token
//! reviews, its root's Secret read by name and created, and the Secret's owner (a
//! ServiceAccount) read by name.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{API_SERVER_AUDIENCE, Event, Shared, status};

/// A request this module answers.
pub(super) enum Asked {
    TokenReview,
    /// A Secret or a ServiceAccount, by name.
    Get {
        plural: &'static str,
        namespace: String,
        name: String,
    },
    CreateSecret {
        namespace: String,
    },
}

/// Which of this module's requests `method path` is, if any.
pub(super) fn route(method: &str, path: &str) -> Option<Asked> {
    if method == "POST" && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        return Some(Asked::TokenReview);
    }
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut parts = rest.split('/');
    let (namespace, plural, name) = (parts.next()?, parts.next()?, parts.next());
    let plural = ["secrets", "serviceaccounts"].into_iter().find(|p| *p == plural)?;
    if parts.next().is_some() {
        return None;
    }
    let namespace = namespace.to_owned();
    match (method, name) {
        ("GET", Some(name)) => Some(Asked::Get { plural, namespace, name: name.to_owned() }),
        ("POST", None) if plural == "secrets" => Some(Asked::CreateSecret { namespace }),
        _ => None,
    }
}

/// The status code and body answering `asked`.
pub(super) fn answer(shared: &Shared, asked: Asked, body: &Value) -> (u16, Value) {
    match asked {
        Asked::TokenReview => review(shared, body),
        Asked::Get { plural, namespace, name } => {
            let (key, collection) = (format!("{namespace}/{name}"), format!("/api/v1/{plural}"));
            match shared.lock().objects.get(&collection).and_then(|c| c.get(&key)) {
                Some(object) => (200, object.clone()),
                None => (404, status(404, "NotFound", &format!("{plural} \"{name}\" not found"))),
            }
        }
        Asked::CreateSecret { namespace } => create_secret(shared, &namespace, body),
    }
}

const SECRETS: &str = "/api/v1/secrets";

/// As the real server reviews a service-account token: authenticated only for the audiences
/// it was made for that the review asks about (its own when the review names none), which it
/// echoes; otherwise an error and no user.
fn review(shared: &Shared, body: &Value) -> (u16, Value) {
    let state = shared.lock();
    if state.failing_reviews {
        return (500, status(500, "InternalError", "the double is failing token reviews"));
    }
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let asked: Vec<String> = match body["spec"]["audiences"].as_array() {
        Some(a) if !a.is_empty() => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => vec![API_SERVER_AUDIENCE.to_owned()],
    };
    let status = match state.tokens.get(token) {
        None => json!({"error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}),
        Some(known) => {
            let audiences: Vec<&String> = asked.iter().filter(|a| known.audiences.contains(a)).collect();
            if audiences.is_empty() {
                json!({"error": format!(
                    "[invalid bearer token, token audiences {:?} is invalid for the target audiences {asked:?}]",
                    known.audiences
                )})
            } else {
                let mut user = json!({"username": known.username, "uid": "0b5c6f1e",
                    "groups": ["system:serviceaccounts", "system:authenticated"]});
                if let Some(node) = &known.node {
                    user["extra"] = json!({"authentication.kubernetes.io/node-name": [node]});
                }
                json!({"authenticated": true, "audiences": audiences, "user": user})
            }
        }
    };
    let mut reply = body.clone();
    reply["apiVersion"] = json!("authentication.k8s.io/v1");
    reply["kind"] = json!("TokenReview");
    reply["status"] = status;
    (201, reply)
}

fn create_secret(shared: &Shared, namespace: &str, body: &Value) -> (u16, Value) {
    // Replicas racing: every create waits until the expected number have arrived.
    let mut state = shared.lock();
    state.secret_creates_arrived += 1;
    shared.wake.notify_all();
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.secret_creates_arrived < state.secret_create_barrier && Instant::now() < deadline {
        state =
            shared.wake.wait_timeout(state, Duration::from_millis(50)).unwrap_or_else(|p| p.into_inner()).0;
    }
    let Some(name) = body["metadata"]["name"].as_str() else {
        return (422, status(422, "Invalid", "metadata.name: Required value"));
    };
    let key = format!("{namespace}/{name}");
    if state.objects.get(SECRETS).is_some_and(|c| c.contains_key(&key)) {
        return (409, status(409, "AlreadyExists", &format!("secrets \"{name}\" already exists")));
    }
    let mut object = body.clone();
    object["apiVersion"] = json!("v1");
    object["kind"] = json!("Secret");
    object["metadata"]["namespace"] = json!(namespace);
    state.rv += 1;
    let rv = state.rv;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    // As the real server does: a uid per object (a dependent's owner reference names it).
    object["metadata"]["uid"] = json!(format!("5e0c{rv:04x}-0000-4000-8000-000000000000"));
    state.objects.entry(SECRETS.to_owned()).or_default().insert(key, object.clone());
    state.events.push(Event { rv, path: SECRETS.to_owned(), kind: "ADDED", object: object.clone() });
    drop(state);
    shared.wake.notify_all();
    (201, object)
}
