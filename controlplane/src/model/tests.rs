//! Parsing and validation, field by field.

use super::*;

fn parse(text: &str) -> Result<Option<Object>, FieldError> {
    parse_document(serde_yaml::from_str(text).expect("yaml"))
}

#[test]
fn reads_a_pod() {
    let pod = parse(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cart-0, namespace: shop, uid: 6b1f-0d2e, labels: {app: cart},\n\
         ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: cart, controller: true}]}\n\
         spec: {nodeName: node1, serviceAccountName: cart}\nstatus: {podIP: 10.0.0.5, podIPs: [{ip: 10.0.0.5}]}\n",
    )
    .expect("valid")
    .expect("object");
    let Object::Pod(pod) = pod else { panic!("not a pod") };
    assert_eq!(pod.spec.node_name.as_deref(), Some("node1"));
    assert_eq!(pod.metadata.owner_references[0].kind, "StatefulSet");
}

#[test]
fn errors_name_the_field() {
    let e = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: p, uid: a1}\nstatus: {podIP: 10.0.0.x}\n")
        .expect_err("ip");
    assert_eq!(e.field, "status.podIP");
    let e = parse("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 99999}]}\n")
        .expect_err("port");
    assert_eq!(e.field, "spec.ports[0].port");
    let e = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").expect_err("uid");
    assert_eq!(e.field, "metadata.uid");
    let e = parse(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n\
         spec: {rules: [{to: [{operation: {paths: [/admin]}}]}]}\n",
    )
    .expect_err("l7");
    assert_eq!(e.field, "spec.rules[0].to[0].operation.paths");
    let e = parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n").expect_err("kind");
    assert_eq!(e.field, "kind");
}

#[test]
fn cidrs() {
    assert_eq!(parse_cidr("10.0.0.0/8"), Ok(("10.0.0.0".parse().expect("ip"), 8)));
    assert_eq!(parse_cidr("fd00::1"), Ok(("fd00::1".parse().expect("ip"), 128)));
    assert!(parse_cidr("10.0.0.0/33").is_err());
}

fn pod_with(metadata: &str, rest: &str) -> Result<Option<Object>, FieldError> {
    parse(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p, uid: a1, {metadata}}}\n{rest}"))
}

fn policy(spec: &str) -> Result<Option<Object>, FieldError> {
    parse(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: a}}\nspec: {spec}\n"
    ))
}

/// serde_yaml 0.9 would turn `app: 1` into "1" if it deserialized straight into a string map,
/// and through a `Value` it reports a key that is not a string at `metadata.labels.?`. Both
/// are refused here as the API server refuses them, at the field at fault.
#[test]
fn label_values_must_be_strings() {
    let direct: Labels = serde_yaml::from_str("app: 1\non: true\n").expect("coerced");
    assert_eq!(direct["app"], "1", "what serde_yaml does on its own");

    for (value, hint) in [
        ("1", "quote it: \"1\""),
        ("true", "quote it: \"true\""),
        ("1.5", "quote it"),
        ("null", "write \"\" for an empty value"),
        ("{a: b}", "not a map"),
        ("[a]", "not a list"),
    ] {
        let e = pod_with(&format!("labels: {{app: {value}}}"), "").expect_err(value);
        assert_eq!(e.field, "metadata.labels.app", "{value}");
        assert!(e.message.contains("must be a string") && e.message.contains(hint), "{value}: {e}");
    }
    let e = pod_with("labels: {on: true}", "").expect_err("on");
    assert_eq!(e.field, "metadata.labels.on");
    let e = pod_with("labels: {1: a}", "").expect_err("key");
    assert_eq!(e.field, "metadata.labels");
    assert!(e.message.contains("the key 1 is not a string"), "{e}");
    let e = pod_with("annotations: {note: 5}", "").expect_err("annotation");
    assert_eq!(e.field, "metadata.annotations.note");
    let e = parse("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {app: 2}}\n")
        .expect_err("selector");
    assert_eq!(e.field, "spec.selector.app");
    let e = policy("{selector: {matchLabels: {app: false}}}").expect_err("matchLabels");
    assert_eq!(e.field, "spec.selector.matchLabels.app");
    // Quoted, they are strings.
    pod_with("labels: {app: \"1\", on: \"true\"}", "").expect("strings");
}

#[test]
fn names_and_labels_are_bounded_as_kubernetes_bounds_them() {
    let long = "a".repeat(64);
    let e = parse(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {long}}}\n")).expect_err("ns");
    assert_eq!(e.field, "metadata.name");
    let e = parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n").expect_err("a dot");
    assert_eq!(e.field, "metadata.name");
    let e = parse("apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\n").expect_err("rfc 1035");
    assert_eq!(e.field, "metadata.name");
    let e = parse(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, uid: a1}}\n", "a".repeat(254)))
        .expect_err("pod name");
    assert_eq!(e.field, "metadata.name");
    pod_with("namespace: shop", "").expect("a pod name may have dots");
    let e = pod_with(&format!("namespace: {long}"), "").expect_err("namespace");
    assert_eq!(e.field, "metadata.namespace");
    let e = pod_with(&format!("labels: {{app: {long}}}"), "").expect_err("value");
    assert_eq!(e.field, "metadata.labels.app");
    let e = pod_with("labels: {\"a b\": x}", "").expect_err("key");
    assert_eq!(e.field, "metadata.labels");
    let many = |n: usize| (0..n).map(|i| format!("nodemesh.io/l{i}: x")).collect::<Vec<_>>().join(", ");
    pod_with(&format!("labels: {{{}, app: a}}", many(32)), "").expect("32 nodemesh.io/ labels");
    let e = pod_with(&format!("labels: {{{}}}", many(33)), "").expect_err("too many for the agent");
    assert_eq!(e.field, "metadata.labels");
    let e = pod_with("annotations: {\"Bad.io/x\": y}", "").expect_err("annotation key");
    assert_eq!(e.field, "metadata.annotations");
    let e = pod_with("", "spec: {serviceAccountName: \"x/ns/kube-system/sa/admin\"}").expect_err("sa");
    assert_eq!(e.field, "spec.serviceAccountName");
    let e = pod_with("", "spec: {nodeName: Node_1}").expect_err("node");
    assert_eq!(e.field, "spec.nodeName");
    let e = pod_with(
        "",
        "spec: {containers: [{name: app, ports: [{containerPort: 80, name: a-very-long-port-name}]}]}",
    )
    .expect_err("port name");
    assert_eq!(e.field, "spec.containers[0].ports[0].name");
    let e = pod_with("ownerReferences: [{kind: ReplicaSet, name: \"a/b\"}]", "").expect_err("owner");
    assert_eq!(e.field, "metadata.ownerReferences[0].name");
    let e = pod_with("", "status: {phase: Exploded}").expect_err("phase");
    assert_eq!(e.field, "status.phase");
    let e = parse(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80, targetPort: Http}]}\n",
    )
    .expect_err("target port");
    assert_eq!(e.field, "spec.ports[0].targetPort");
}

#[test]
fn policy_strings_are_bounded_and_well_formed() {
    let at = "spec.rules[0].from[0].source";
    let e =
        policy(&format!("{{rules: [{{from: [{{source: {{principals: [\"{}\"]}}}}]}}]}}", "a".repeat(641)))
            .expect_err("long");
    assert_eq!(e.field, format!("{at}.principals[0]"));
    let e = policy("{rules: [{from: [{source: {principals: [a, \"\"]}}]}]}").expect_err("empty");
    assert_eq!(e.field, format!("{at}.principals[1]"));
    let e = policy("{rules: [{from: [{source: {notPrincipals: [\"a*b\"]}}]}]}").expect_err("wildcard");
    assert_eq!(e.field, format!("{at}.notPrincipals[0]"));
    let e = policy(&format!("{{rules: [{{from: [{{source: {{notNamespaces: [{}]}}}}]}}]}}", "a".repeat(65)))
        .expect_err("namespace");
    assert_eq!(e.field, format!("{at}.notNamespaces[0]"));
    let e = policy("{rules: [{from: [{source: {}}]}]}").expect_err("an empty source");
    assert_eq!(e.field, at);
    let e = policy("{rules: [{to: [{operation: {}}]}]}").expect_err("an empty operation");
    assert_eq!(e.field, "spec.rules[0].to[0].operation");
    policy("{rules: [{from: [{source: {principals: [\"*\", \"cluster.local/ns/a/*\", \"*/sa/b\"]}}]}]}")
        .expect("wildcards");
}

/// Two lists checked as one used to report the second list's first entry as `ports[2]`.
#[test]
fn each_list_is_named_for_itself() {
    let e = policy("{rules: [{to: [{operation: {ports: [\"80\", \"81\"], notPorts: [\"x\"]}}]}]}")
        .expect_err("notPorts");
    assert_eq!(e.field, "spec.rules[0].to[0].operation.notPorts[0]");
    let e = policy("{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.0.0.0/99]}}]}]}")
        .expect_err("notIpBlocks");
    assert_eq!(e.field, "spec.rules[0].from[0].source.notIpBlocks[0]");
}

#[test]
fn pod_and_service_addresses_must_be_unicast() {
    for ip in [
        "0.0.0.0",
        "127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "169.254.0.1",
        "::",
        "::1",
        "ff02::1",
        "::ffff:127.0.0.1",
    ] {
        let e = pod_with("", &format!("status: {{podIP: \"{ip}\"}}")).expect_err(ip);
        assert_eq!(e.field, "status.podIP", "{ip}");
        let e = pod_with("", &format!("status: {{podIPs: [{{ip: \"10.0.0.1\"}}, {{ip: \"{ip}\"}}]}}"))
            .expect_err(ip);
        assert_eq!(e.field, "status.podIPs[1].ip", "{ip}");
        let e = parse(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {{clusterIP: \"{ip}\"}}\n"
        ))
        .expect_err(ip);
        assert_eq!(e.field, "spec.clusterIP", "{ip}");
    }
    pod_with("", "status: {podIP: \"::ffff:10.0.0.1\"}").expect("IPv4-mapped unicast");
}

#[test]
fn nodes_and_the_service_fields_of_load_balancing() {
    let node = parse(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {topology.kubernetes.io/zone: eu-1a}}\n\
         spec: {podCIDR: 10.244.1.0/24}\nstatus: {nodeInfo: {osImage: x}}\n",
    )
    .expect("valid")
    .expect("object");
    assert_eq!(node.key().to_string(), "Node n1", "cluster-scoped");
    let service = parse(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop}\n\
         spec: {trafficDistribution: PreferSameNode, internalTrafficPolicy: Local, publishNotReadyAddresses: true}\n",
    )
    .expect("valid")
    .expect("object");
    let Object::Service(service) = service else { panic!("not a service") };
    assert_eq!(service.spec.traffic_distribution.as_deref(), Some("PreferSameNode"));
    assert_eq!(service.spec.internal_traffic_policy.as_deref(), Some("Local"));
    assert!(service.spec.publish_not_ready_addresses);

    let e =
        parse("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {internalTrafficPolicy: local}\n")
            .expect_err("case");
    assert_eq!(e.field, "spec.internalTrafficPolicy");
    // Kubernetes leaves other distributions to the implementation: accepted, and no preference.
    assert!(
        parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {trafficDistribution: example.com/x}\n"
        )
        .is_ok()
    );
    let e = parse(
        "apiVersion: networking.istio.io/v2\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: a}\n",
    )
    .expect_err("version");
    assert_eq!(e.field, "apiVersion");
}
