//! PeerAuthentication, the way istiod hands it to ztunnel: not as its own resource, but as
//! a DENY Authorization that refuses connections without a peer identity (plaintext), for
//! the workloads and ports whose effective mode is STRICT. Named
//! `converted_peer_authentication_<name>`, scoped to the workloads that list it.
//!
//! The effective mode of a pod is Istio's: the workload-level policy (selector, in the pod's
//! namespace) over the namespace-wide one over the mesh-wide one (root namespace, no
//! selector); an unset mode inherits; PERMISSIVE when none says. Port-level modes (only on
//! selector policies) override it per target port. DISABLE accepts plaintext as PERMISSIVE
//! does: between nodes the mesh still sends HBONE to a captured workload, as ztunnel does.
//! Where Istio would take the oldest of two competing policies, this takes the first by name
//! (the YAML source has no creation times).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use nodemesh_conventions::Labels;
use nodemesh_proto::{istio::security as sec, prost::Message as _, prost_types::Any, type_urls};

use crate::model::{MutualTls, PeerAuthentication, Pod};

/// The name prefix istiod gives converted policies.
pub const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Permissive,
    Strict,
}

fn mode(m: Option<&MutualTls>) -> Option<Mode> {
    match m?.mode.as_deref()? {
        "STRICT" => Some(Mode::Strict),
        "PERMISSIVE" | "DISABLE" => Some(Mode::Permissive),
        _ => None,
    }
}

/// The mesh's PeerAuthentications, by where they apply.
pub struct PeerAuthIndex<'a> {
    mesh: Option<&'a PeerAuthentication>,
    namespaces: HashMap<&'a str, &'a PeerAuthentication>,
    selectors: HashMap<&'a str, Vec<&'a PeerAuthentication>>,
}

/// A pod's converted policy: its `namespace/name`, and the resource.
pub struct Converted {
    pub name: String,
    pub body: Any,
}

impl<'a> PeerAuthIndex<'a> {
    pub fn new(all: &'a [Arc<PeerAuthentication>], root_namespace: &str) -> Self {
        let mut sorted: Vec<&PeerAuthentication> = all.iter().map(|p| &**p).collect();
        sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut index = Self { mesh: None, namespaces: HashMap::new(), selectors: HashMap::new() };
        for pa in sorted {
            let ns = pa.metadata.namespace.as_deref().unwrap_or_default();
            match (&pa.spec.selector, ns == root_namespace) {
                (Some(_), _) => index.selectors.entry(ns).or_default().push(pa),
                (None, true) => {
                    index.mesh.get_or_insert(pa);
                }
                (None, false) => {
                    index.namespaces.entry(ns).or_insert(pa);
                }
            }
        }
        index
    }

    pub fn is_empty(&self) -> bool {
        self.mesh.is_none() && self.namespaces.is_empty() && self.selectors.is_empty()
    }

    /// The policy that enforces `pod`'s effective mode, if any of its ports is STRICT.
    pub fn for_pod(&self, pod: &Pod) -> Option<Converted> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let selected = self.selectors.get(ns).and_then(|list| {
            list.iter().find(|pa| {
                pa.spec.selector.as_ref().is_some_and(|s| labels_match(&s.match_labels, &pod.metadata.labels))
            })
        });
        let namespace = self.namespaces.get(ns).copied();
        // The most specific policy names the result; each level's mode overrides the one above.
        let source = selected.copied().or(namespace).or(self.mesh)?;
        let mut effective = Mode::Permissive;
        for level in [self.mesh, namespace, selected.copied()].into_iter().flatten() {
            if let Some(m) = mode(level.spec.mtls.as_ref()) {
                effective = m;
            }
        }
        // Ports whose mode differs from the workload's.
        let mut exceptions: Vec<u32> = selected
            .map(|pa| {
                pa.spec
                    .port_level_mtls
                    .iter()
                    .filter(|(_, m)| mode(Some(m)).is_some_and(|m| m != effective))
                    .filter_map(|(port, _)| port.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        exceptions.sort_unstable();
        let unauthenticated = sec::Clause {
            matches: vec![sec::Match {
                not_principals: vec![sec::StringMatch {
                    match_type: Some(sec::string_match::MatchType::Presence(())),
                }],
                ..Default::default()
            }],
        };
        let mut clauses = vec![unauthenticated];
        match (effective, exceptions.is_empty()) {
            (Mode::Strict, true) => {}
            (Mode::Strict, false) => clauses.push(sec::Clause {
                matches: vec![sec::Match { not_destination_ports: exceptions, ..Default::default() }],
            }),
            (Mode::Permissive, true) => return None,
            (Mode::Permissive, false) => clauses.push(sec::Clause {
                matches: vec![sec::Match { destination_ports: exceptions, ..Default::default() }],
            }),
        }
        let source_ns = source.metadata.namespace.clone().unwrap_or_default();
        let name = format!("{CONVERTED_PREFIX}{}", source.metadata.name);
        let auth = sec::Authorization {
            name: name.clone(),
            namespace: source_ns.clone(),
            scope: sec::Scope::WorkloadSelector as i32,
            action: sec::Action::Deny as i32,
            rules: vec![sec::Rule { clauses }],
            ..Default::default()
        };
        Some(Converted {
            name: format!("{source_ns}/{name}"),
            body: Any { type_url: type_urls::AUTHORIZATION.into(), value: auth.encode_to_vec() },
        })
    }
}

fn labels_match(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Converted policies by name, each once (many pods share one).
pub type ConvertedSet = BTreeMap<String, Any>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_document;
    use crate::world::tests::pod;

    fn pa(yaml: &str) -> Arc<PeerAuthentication> {
        let doc: serde_yaml::Value = serde_yaml::from_str(yaml).expect("yaml");
        match parse_document(doc).expect("valid").expect("object") {
            crate::model::Object::PeerAuthentication(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn decoded(c: &Converted) -> sec::Authorization {
        sec::Authorization::decode(&*c.body.value).expect("decode")
    }

    const HEAD: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n";

    #[test]
    fn precedence_workload_over_namespace_over_mesh() {
        let all = vec![
            pa(&format!(
                "{HEAD}metadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
            )),
            pa(&format!(
                "{HEAD}metadata: {{name: open, namespace: legacy}}\nspec: {{mtls: {{mode: PERMISSIVE}}}}\n"
            )),
            pa(&format!(
                "{HEAD}metadata: {{name: db, namespace: legacy}}\nspec:\n  selector: {{matchLabels: {{app: db}}}}\n  mtls: {{mode: STRICT}}\n  portLevelMtls:\n    9090: {{mode: PERMISSIVE}}\n"
            )),
        ];
        let index = PeerAuthIndex::new(&all, "istio-system");
        // Mesh-wide STRICT: every port.
        let shop = index.for_pod(&pod("cart-1", "shop", "n1", &[])).expect("strict");
        assert_eq!(shop.name, "istio-system/converted_peer_authentication_default");
        assert_eq!(decoded(&shop).rules[0].clauses.len(), 1);
        // The namespace says PERMISSIVE: nothing to enforce.
        assert!(index.for_pod(&pod("web-1", "legacy", "n1", &[])).is_none());
        // The workload says STRICT but for port 9090.
        let db = index.for_pod(&pod("db-1", "legacy", "n1", &[("app", "db")])).expect("db");
        assert_eq!(db.name, "legacy/converted_peer_authentication_db");
        let auth = decoded(&db);
        assert_eq!(auth.action, sec::Action::Deny as i32);
        assert_eq!(auth.rules[0].clauses[1].matches[0].not_destination_ports, vec![9090]);
    }

    #[test]
    fn a_strict_port_on_a_permissive_workload() {
        let all = vec![pa(&format!(
            "{HEAD}metadata: {{name: admin-port, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: cart}}}}\n  portLevelMtls:\n    \"8443\": {{mode: STRICT}}\n"
        ))];
        let index = PeerAuthIndex::new(&all, "istio-system");
        let c = index.for_pod(&pod("cart-1", "shop", "n1", &[("app", "cart")])).expect("converted");
        assert_eq!(decoded(&c).rules[0].clauses[1].matches[0].destination_ports, vec![8443]);
        assert!(index.for_pod(&pod("web-1", "shop", "n1", &[])).is_none());
    }

    #[test]
    fn bad_modes_and_ports_name_the_field() {
        for (spec, field) in [
            ("{mtls: {mode: strict}}", "spec.mtls.mode"),
            ("{portLevelMtls: {80: {mode: STRICT}}}", "spec.portLevelMtls"),
            (
                "{selector: {matchLabels: {a: b}}, portLevelMtls: {http: {mode: STRICT}}}",
                "spec.portLevelMtls.http",
            ),
        ] {
            let doc: serde_yaml::Value =
                serde_yaml::from_str(&format!("{HEAD}metadata: {{name: x, namespace: y}}\nspec: {spec}\n"))
                    .expect("yaml");
            let e = parse_document(doc).expect_err("invalid");
            assert!(e.to_string().contains(field), "{spec}: {e}");
        }
    }
}
