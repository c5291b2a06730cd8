//! An object as the API server sends it, cut down to the fields the model reads for its kind
//! (the API server's objects carry managed fields, container specs, status the model would
//! refuse as unknown), and Istio's dataplane-mode label read as ours when asked.

use serde_json::{Map, Value};

use super::{ISTIO_DATAPLANE_MODE, Kind};

/// The fields of `value` named by `paths` (dotted; `[]` maps over a list), and only those.
fn pick(value: &Value, paths: &[&str]) -> Value {
    let mut out = Value::Object(Map::new());
    for path in paths {
        copy(value, &mut out, &path.split('.').collect::<Vec<_>>());
    }
    out
}

fn copy(from: &Value, to: &mut Value, path: &[&str]) {
    let Some((first, rest)) = path.split_first() else {
        *to = from.clone();
        return;
    };
    let (field, list) = match first.strip_suffix("[]") {
        Some(field) => (field, true),
        None => (*first, false),
    };
    let (Some(from), Value::Object(to)) = (from.get(field), to) else {
        return;
    };
    if list && let Value::Array(items) = from {
        let target =
            to.entry(field).or_insert_with(|| Value::Array(vec![Value::Object(Map::new()); items.len()]));
        if let Value::Array(targets) = target {
            for (item, target) in items.iter().zip(targets) {
                if rest.is_empty() {
                    *target = item.clone();
                } else if item.is_object() {
                    copy(item, target, rest);
                } else {
                    // Not an object: kept as written, so the model says what is wrong with it.
                    *target = item.clone();
                }
            }
        }
        return;
    }
    if rest.is_empty() || !from.is_object() {
        to.insert(field.to_owned(), from.clone());
        return;
    }
    let target = to.entry(field).or_insert_with(|| Value::Object(Map::new()));
    copy(from, target, rest);
}

const METADATA: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
    "metadata.ownerReferences[].kind",
    "metadata.ownerReferences[].name",
    "metadata.ownerReferences[].controller",
    "metadata.deletionTimestamp",
];

const POD: &[&str] = &[
    "spec.nodeName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "spec.containers[].name",
    "spec.containers[].ports[].name",
    "spec.containers[].ports[].containerPort",
    "status.podIP",
    "status.podIPs[].ip",
    "status.phase",
    "status.conditions[].type",
    "status.conditions[].status",
];

const SERVICE: &[&str] = &[
    "spec.selector",
    "spec.clusterIP",
    "spec.clusterIPs",
    "spec.ports[].name",
    "spec.ports[].port",
    "spec.ports[].targetPort",
    "spec.ports[].protocol",
    "spec.ports[].appProtocol",
    "spec.trafficDistribution",
    "spec.internalTrafficPolicy",
    "spec.publishNotReadyAddresses",
];

/// An object as the API server sends it, cut down to what the model reads for its kind, with
/// the kind and version it was watched as (list items may carry neither).
pub fn project(kind: &Kind, value: Value) -> Value {
    let fields: Vec<&str> = match kind.kind {
        "Pod" => METADATA.iter().chain(POD).copied().collect(),
        "Service" => METADATA.iter().chain(SERVICE).copied().collect(),
        _ if kind.custom => METADATA.iter().copied().chain(["spec"]).collect(),
        _ => METADATA.to_vec(),
    };
    let mut out = pick(&value, &fields);
    if let Value::Object(map) = &mut out {
        map.insert("apiVersion".into(), Value::String(kind.api_version()));
        map.insert("kind".into(), Value::String(kind.kind.into()));
    }
    out
}

/// Istio's `istio.io/dataplane-mode` as Nodemesh's label, where Nodemesh's own is absent:
/// a namespace in `ambient` mode is enrolled, a pod in `none` mode opts out.
pub(super) fn istio_dataplane_mode(kind: &Kind, value: &mut Value) {
    let intercept = match kind.kind {
        "Namespace" => ("ambient", nodemesh_conventions::ENABLED),
        "Pod" => ("none", nodemesh_conventions::DISABLED),
        _ => return,
    };
    let Some(Value::Object(labels)) = value.pointer_mut("/metadata/labels") else {
        return;
    };
    let mode = labels.get(ISTIO_DATAPLANE_MODE).and_then(Value::as_str);
    if mode == Some(intercept.0) && !labels.contains_key(nodemesh_conventions::INTERCEPT_LABEL) {
        labels.insert(nodemesh_conventions::INTERCEPT_LABEL.into(), Value::String(intercept.1.into()));
    }
}
