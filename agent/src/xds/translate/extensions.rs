//! The Workload extensions Nodemesh's control plane adds: `nodemesh.io/pod-uid` (the pod's
//! Kubernetes UID) and `nodemesh.io/labels` (its `nodemesh.io/` labels).

use nodemesh_conventions::{FieldError, Labels, MAX_MESH_LABELS, MESH_LABEL_PREFIX, rules};
use nodemesh_proto::{istio::workload as wl, nodemesh::v1 as nm, prost::Message as _, type_urls};

use super::{Ctx, Invalid};

/// An extension's config, of the type it must have (`what` names it in the error).
fn extension_config<'e>(
    ctx: &Ctx<'_>,
    field: &str,
    ext: &'e wl::Extension,
    type_url: &str,
    what: &str,
) -> Result<&'e [u8], Invalid> {
    let config = ext.config.as_ref().ok_or_else(|| ctx.err(field, "missing"))?;
    if config.type_url != type_url {
        return Err(ctx.err(format!("{field}.type_url"), format!("{:?} is not a {what}", config.type_url)));
    }
    Ok(&config.value)
}

/// `nodemesh.io/pod-uid`: the pod's Kubernetes UID, which names its cgroup.
pub(super) fn pod_uid(ctx: &Ctx<'_>, field: &str, ext: &wl::Extension) -> Result<String, Invalid> {
    let body = extension_config(ctx, field, ext, type_urls::STRING_VALUE, "StringValue")?;
    let value = String::decode(body).map_err(|e| ctx.err(field, e.to_string()))?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(ctx.err(field, format!("{value:?} is not a pod UID")));
    }
    Ok(value)
}

/// `nodemesh.io/labels`: the pod's labels under `nodemesh.io/`.
pub(super) fn labels(ctx: &Ctx<'_>, field: &str, ext: &wl::Extension) -> Result<Labels, Invalid> {
    let body = extension_config(ctx, field, ext, type_urls::LABELS, "nodemesh.v1.Labels")?;
    let labels = nm::Labels::decode(body).map_err(|e| ctx.err(field, e.to_string()))?.labels;
    mesh_labels(&labels).map_err(|e| ctx.invalid(e.within(field)))?;
    Ok(labels)
}

/// At most [`MAX_MESH_LABELS`], each under [`MESH_LABEL_PREFIX`], keys and values as
/// Kubernetes has them (which bounds their length).
fn mesh_labels(labels: &Labels) -> Result<(), FieldError> {
    if labels.len() > MAX_MESH_LABELS {
        return Err(FieldError::new(
            "labels",
            format!("{} labels, more than {MAX_MESH_LABELS}", labels.len()),
        ));
    }
    for (key, value) in labels {
        rules::qualified_name(key).map_err(|m| FieldError::new("labels", m))?;
        if !key.starts_with(MESH_LABEL_PREFIX) {
            return Err(FieldError::new("labels", format!("key {key:?} is not under {MESH_LABEL_PREFIX}")));
        }
        rules::label_value(value).map_err(|m| FieldError::new(format!("labels[{key:?}]"), m))?;
    }
    Ok(())
}

#[cfg(test)]
pub(in crate::xds) mod tests {
    use nodemesh_conventions::LABELS_EXTENSION;
    use nodemesh_proto::prost_types::Any;

    use super::{
        super::tests::{good, resource},
        *,
    };
    use crate::xds::translate::{Address, address};

    /// The `nodemesh.io/labels` extension carrying these labels.
    pub(in crate::xds) fn labels_extension(pairs: &[(&str, &str)]) -> wl::Extension {
        let labels = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        wl::Extension {
            name: LABELS_EXTENSION.into(),
            config: Some(Any {
                type_url: type_urls::LABELS.into(),
                value: nm::Labels { labels }.encode_to_vec(),
            }),
        }
    }

    fn with_labels(pairs: &[(&str, &str)]) -> wl::Workload {
        let mut w = good();
        w.extensions.push(labels_extension(pairs));
        w
    }

    #[test]
    fn reads_the_nodemesh_labels() {
        let w = with_labels(&[("nodemesh.io/splice", "disabled")]);
        let Address::Workload(w) = address(&resource("w", w)).expect("valid") else { panic!("workload") };
        assert_eq!(w.labels.get("nodemesh.io/splice").map(String::as_str), Some("disabled"));
        let Address::Workload(w) = address(&resource("w", good())).expect("valid") else {
            panic!("workload")
        };
        assert!(w.labels.is_empty(), "no extension, no labels");

        let field = |w: wl::Workload| address(&resource("w", w)).expect_err("refused").error.field;
        let at = "workload.extensions[1].config";
        assert_eq!(
            field(with_labels(&[("app", "cart")])),
            format!("{at}.labels"),
            "not a nodemesh.io/ label"
        );
        assert_eq!(field(with_labels(&[("nodemesh.io/a b", "x")])), format!("{at}.labels"), "not a key");
        assert_eq!(
            field(with_labels(&[("nodemesh.io/splice", &"x".repeat(64))])),
            format!("{at}.labels[\"nodemesh.io/splice\"]"),
            "too long a value"
        );
        let many: Vec<(String, &str)> =
            (0..=MAX_MESH_LABELS).map(|i| (format!("nodemesh.io/l{i}"), "x")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(field(with_labels(&many)), format!("{at}.labels"), "too many");
        let mut wrong_type = with_labels(&[]);
        if let Some(config) = wrong_type.extensions[1].config.as_mut() {
            config.type_url = type_urls::STRING_VALUE.into();
        }
        assert_eq!(field(wrong_type), format!("{at}.type_url"));
    }
}
