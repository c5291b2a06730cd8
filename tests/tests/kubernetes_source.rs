//! The control plane's Kubernetes source against an API-server double
//! (`nodemesh_testbed::apiserver`): the same objects served through the double and through a
//! YAML directory give agents the same resources; changes (a namespace label, a deleted pod),
//! a 410 Gone forcing a re-list and dropped watch connections lose nothing; a bad object is
//! reported with its field while the rest serves. No root needed: both control planes run
//! in-process on loopback.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nodemesh_controlplane::{KubernetesSettings, MeshSettings, Settings, Source, kubernetes::kube};
use nodemesh_proto::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, Node, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
    prost_types::{Struct, Value as PbValue, value::Kind},
    type_urls::{ADDRESS, AUTHORIZATION},
};
use nodemesh_testbed::apiserver::ApiServer;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::{mpsc, oneshot},
};
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(10);

/// name → encoded resource, as one agent holds them (for one type).
type Resources = BTreeMap<String, Vec<u8>>;

struct Cp {
    xds: SocketAddr,
    admin: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Cp {
    async fn start(source: Source) -> Self {
        let cp = Self::spawn(source).await;
        cp.wait_serving(WAIT).await;
        cp
    }

    /// Serving once the admin API answers (the Kubernetes source lists first).
    async fn wait_serving(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.try_status().await.is_none() {
            assert!(Instant::now() < deadline, "the control plane did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a control plane without waiting for it to serve.
    async fn spawn(source: Source) -> Self {
        let xds = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind xds");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let (xds_addr, admin_addr) = (xds.local_addr().expect("addr"), admin.local_addr().expect("addr"));
        let settings = Settings {
            source,
            listen: xds_addr,
            admin: admin_addr,
            mesh: MeshSettings::default(),
            poll: Duration::from_secs(60),
            ca: None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(async move {
            let serving = nodemesh_controlplane::serve(settings, xds, admin, async {
                let _ = stopped.await;
            });
            let _ = ready_tx.send(());
            serving.await.expect("control plane");
        });
        let _ = ready_rx.await;
        Self { xds: xds_addr, admin: admin_addr, _stop: stop }
    }

    /// None when the admin API does not answer (within a second: its port is bound before it
    /// serves).
    async fn try_status(&self) -> Option<Value> {
        tokio::time::timeout(Duration::from_secs(1), self.get_status()).await.ok().flatten()
    }

    async fn get_status(&self) -> Option<Value> {
        let mut conn = tokio::net::TcpStream::connect(self.admin).await.ok()?;
        conn.write_all(b"GET /status HTTP/1.0\r\nHost: cp\r\n\r\n").await.ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).await.ok()?;
        serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
    }

    async fn status(&self) -> Value {
        self.try_status().await.expect("status")
    }

    /// Subscribes as `node` to every resource of `type_url` it may see, and keeps the view
    /// up to date (ACKing each response) in the background.
    async fn view(&self, node: &str, type_url: &str) -> Arc<Mutex<Resources>> {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.xds))
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20);
        let (tx, rx) = mpsc::channel(16);
        let value = PbValue { kind: Some(Kind::StringValue(node.into())) };
        let first = DeltaDiscoveryRequest {
            node: Some(Node {
                id: format!("test~{node}"),
                metadata: Some(Struct { fields: [("NODE_NAME".to_owned(), value)].into() }),
                ..Default::default()
            }),
            type_url: type_url.into(),
            ..Default::default()
        };
        tx.send(first).await.expect("send");
        let mut inbound =
            client.delta_aggregated_resources(ReceiverStream::new(rx)).await.expect("stream").into_inner();
        let view = Arc::new(Mutex::new(Resources::new()));
        let shared = Arc::clone(&view);
        tokio::spawn(async move {
            while let Ok(Some(response)) = inbound.message().await {
                {
                    let mut view = shared.lock().expect("view");
                    for name in &response.removed_resources {
                        view.remove(name);
                    }
                    for resource in &response.resources {
                        let bytes = resource.resource.as_ref().map(|a| a.value.clone()).unwrap_or_default();
                        view.insert(resource.name.clone(), bytes);
                    }
                }
                let ack = DeltaDiscoveryRequest {
                    type_url: response.type_url.clone(),
                    response_nonce: response.nonce.clone(),
                    ..Default::default()
                };
                if tx.send(ack).await.is_err() {
                    return;
                }
            }
        });
        view
    }
}

/// An agent's two views (addresses and authorizations) of one control plane.
struct Agent {
    addresses: Arc<Mutex<Resources>>,
    authorizations: Arc<Mutex<Resources>>,
}

impl Agent {
    async fn of(cp: &Cp, node: &str) -> Self {
        Self { addresses: cp.view(node, ADDRESS).await, authorizations: cp.view(node, AUTHORIZATION).await }
    }

    fn snapshot(&self) -> (Resources, Resources) {
        (self.addresses.lock().expect("view").clone(), self.authorizations.lock().expect("view").clone())
    }
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if check() {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Both agents hold the same resources, and at least `min` (addresses, authorizations).
async fn wait_same(what: &str, k8s: &Agent, yaml: &Agent, min: (usize, usize)) {
    let started = Instant::now();
    loop {
        let (a, b) = (k8s.snapshot(), yaml.snapshot());
        if a == b && a.0.len() >= min.0 && a.1.len() >= min.1 {
            return;
        }
        if started.elapsed() > WAIT {
            let names = |r: &Resources| r.keys().cloned().collect::<Vec<_>>();
            let differ = |x: &Resources, y: &Resources| {
                x.iter().filter(|(k, v)| y.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect::<Vec<_>>()
            };
            panic!(
                "{what}: the two sources serve different resources\n kubernetes: {:?} / {:?}\n yaml:       {:?} / {:?}\n \
                 differing: {:?} / {:?}",
                names(&a.0),
                names(&a.1),
                names(&b.0),
                names(&b.1),
                differ(&a.0, &b.0),
                differ(&a.1, &b.1)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Objects as `kubectl get -o json` prints them, with the fields the model never reads.

fn managed_fields() -> Value {
    json!([{"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
        "time": "2026-11-30T10:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}])
}

fn namespace(name: &str, intercept: bool) -> Value {
    let mut labels = json!({"kubernetes.io/metadata.name": name});
    if intercept {
        labels["nodemesh.io/intercept"] = json!("enabled");
    }
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": uuid(&format!("ns/{name}")), "resourceVersion": "1",
            "creationTimestamp": "2026-11-30T10:00:00Z", "labels": labels, "managedFields": managed_fields()},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

fn node(name: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": uuid(&format!("node/{name}")),
            "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/region": "eu",
                "topology.kubernetes.io/zone": zone},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}],
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "nodeInfo": {"kubeletVersion": "v1.33.1", "containerRuntimeVersion": "containerd://2.0.0"}}
    })
}

fn uuid(seed: &str) -> String {
    let h = seed
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 4) & 0xfff,
        h & 0xffff_ffff_ffff
    )
}

fn pod(ns: &str, name: &str, node: &str, ip: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": uuid(&format!("pod/{ns}/{name}")),
            "generateName": format!("{app}-7d9c5b-"), "resourceVersion": "1",
            "creationTimestamp": "2026-11-30T10:00:00Z",
            "labels": {"app": app, "pod-template-hash": "7d9c5b"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-30T10:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7d9c5b"),
                "uid": uuid(&format!("rs/{ns}/{app}")), "controller": true, "blockOwnerDeletion": true}],
            "managedFields": managed_fields()
        },
        "spec": {
            "nodeName": node, "serviceAccountName": format!("sa-{app}"), "serviceAccount": format!("sa-{app}"),
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "securityContext": {},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": 300}],
            "containers": [{
                "name": app, "image": format!("registry.example/{app}:1.0"), "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "env": [{"name": "MODE", "value": "prod"}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                    "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "readOnly": true}]
            }],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]
        },
        "status": {
            "phase": "Running", "hostIP": "172.18.0.2", "hostIPs": [{"ip": "172.18.0.2"}],
            "podIP": ip, "podIPs": [{"ip": ip}], "qosClass": "Burstable", "startTime": "2026-11-30T10:00:01Z",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null,
                    "lastTransitionTime": "2026-11-30T10:00:02Z"},
                {"type": "Initialized", "status": "True", "lastProbeTime": null,
                    "lastTransitionTime": "2026-11-30T10:00:01Z"},
                {"type": "Ready", "status": "True", "lastProbeTime": null,
                    "lastTransitionTime": "2026-11-30T10:00:05Z"},
                {"type": "ContainersReady", "status": "True", "lastProbeTime": null,
                    "lastTransitionTime": "2026-11-30T10:00:05Z"},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                    "lastTransitionTime": "2026-11-30T10:00:00Z"}
            ],
            "containerStatuses": [{"name": app, "ready": true, "restartCount": 0, "started": true,
                "image": format!("registry.example/{app}:1.0"), "imageID": "sha256:0123",
                "containerID": "containerd://abc", "state": {"running": {"startedAt": "2026-11-30T10:00:02Z"}},
                "lastState": {}}]
        }
    })
}

fn service(ns: &str, name: &str, ip: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": uuid(&format!("svc/{ns}/{name}")),
            "resourceVersion": "1", "creationTimestamp": "2026-11-30T10:00:00Z",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\"}\n"},
            "managedFields": managed_fields()},
        "spec": {
            "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
            "selector": {"app": app},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "appProtocol": "http"}]
        },
        "status": {"loadBalancer": {}}
    })
}

fn authorization_policy(ns: &str, name: &str, action: &str) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns, "uid": uuid(&format!("ap/{ns}/{name}")), "generation": 1,
            "resourceVersion": "1", "creationTimestamp": "2026-11-30T10:00:00Z", "managedFields": managed_fields()},
        "spec": {"selector": {"matchLabels": {"app": "cart"}}, "action": action,
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/sa-web"]}}],
                "to": [{"operation": {"ports": ["8080"]}}]}]},
        "status": {"validationMessages": [], "observedGeneration": "1"}
    })
}

fn peer_authentication(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns, "uid": uuid(&format!("pa/{ns}/{name}")), "generation": 1,
            "resourceVersion": "1", "creationTimestamp": "2026-11-30T10:00:00Z"},
        "spec": {"selector": {"matchLabels": {"app": "cart"}}, "mtls": {"mode": "STRICT"}}
    })
}

fn yaml(objects: &[Value]) -> String {
    objects.iter().map(|o| format!("---\n{}", serde_yaml::to_string(o).expect("yaml"))).collect()
}

/// Atomic, as a controller writes.
fn write(dir: &std::path::Path, name: &str, objects: &[Value]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, yaml(objects)).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

struct Both {
    api: ApiServer,
    dir: tempfile::TempDir,
    k8s: Cp,
    yaml: Cp,
}

impl Both {
    /// `objects` through the double and through a directory (one file per object).
    async fn start(objects: &[Value]) -> Self {
        let api = ApiServer::start().expect("api server double");
        // Installed only later (if at all): a missing CRD must not hold the others up.
        api.uninstall("gateway.networking.k8s.io/v1", "HTTPRoute");
        let dir = tempfile::tempdir().expect("tempdir");
        for object in objects {
            api.apply(object.clone());
            write(dir.path(), &file_name(object), std::slice::from_ref(object));
        }
        let config = kube::Config::new(api.url().parse().expect("url"));
        let k8s = Cp::start(Source::Kubernetes(KubernetesSettings {
            config: Some(Box::new(config)),
            istio_dataplane_mode: false,
        }))
        .await;
        let yaml = Cp::start(Source::Directory(dir.path().to_owned())).await;
        Self { api, dir, k8s, yaml }
    }

    fn apply(&self, object: Value) {
        write(self.dir.path(), &file_name(&object), std::slice::from_ref(&object));
        self.api.apply(object);
    }

    fn apply_unseen(&self, object: Value) {
        write(self.dir.path(), &file_name(&object), std::slice::from_ref(&object));
        self.api.apply_unseen(object);
    }

    fn delete(&self, object: &Value) {
        std::fs::remove_file(self.dir.path().join(file_name(object))).expect("remove");
        let meta = &object["metadata"];
        assert!(self.api.delete(
            object["apiVersion"].as_str().expect("apiVersion"),
            object["kind"].as_str().expect("kind"),
            meta["namespace"].as_str(),
            meta["name"].as_str().expect("name"),
        ));
    }
}

fn file_name(object: &Value) -> String {
    let meta = &object["metadata"];
    format!(
        "{}-{}-{}.yaml",
        object["kind"].as_str().expect("kind").to_lowercase(),
        meta["namespace"].as_str().unwrap_or("cluster"),
        meta["name"].as_str().expect("name")
    )
}

fn cluster() -> Vec<Value> {
    vec![
        namespace("shop", true),
        namespace("other", false),
        node("node-a", "eu-1a"),
        node("node-b", "eu-1b"),
        pod("shop", "cart-0", "node-a", "10.244.1.10", "cart"),
        pod("shop", "web-0", "node-b", "10.244.2.10", "web"),
        pod("other", "batch-0", "node-a", "10.244.1.20", "batch"),
        service("shop", "cart", "10.96.0.10", "cart"),
        service("shop", "web", "10.96.0.11", "web"),
        authorization_policy("shop", "cart-allow-web", "ALLOW"),
        peer_authentication("shop", "cart-strict"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_and_a_directory_serve_the_same() {
    let both = Both::start(&cluster()).await;
    let (k8s_a, yaml_a) = (Agent::of(&both.k8s, "node-a").await, Agent::of(&both.yaml, "node-a").await);
    let (k8s_b, yaml_b) = (Agent::of(&both.k8s, "node-b").await, Agent::of(&both.yaml, "node-b").await);
    // node-a: 3 pods and 2 services; node-b does not see batch-0 (not intercepted, not its own).
    wait_same("node-a", &k8s_a, &yaml_a, (5, 2)).await;
    wait_same("node-b", &k8s_b, &yaml_b, (4, 0)).await;
    let (addresses, authorizations) = k8s_a.snapshot();
    assert!(addresses.contains_key("Kubernetes//Pod/shop/cart-0"), "{:?}", addresses.keys());
    assert!(!authorizations.is_empty(), "the policies are served");
    let status = both.k8s.status().await;
    assert_eq!(status["served"]["input_errors"], json!([]), "{status}");

    // Labelling a namespace through the API server changes what is served within a second.
    let before = k8s_a.snapshot();
    both.apply(namespace("other", true));
    let took =
        wait_until("the namespace label to be served", Duration::from_secs(1), || k8s_a.snapshot() != before)
            .await;
    println!("namespace label served after {took:?}");
    wait_same("after the label", &k8s_a, &yaml_a, (5, 2)).await;

    // A deleted pod disappears.
    both.delete(&pod("shop", "web-0", "node-b", "10.244.2.10", "web"));
    wait_until("the deleted pod to go", Duration::from_secs(1), || {
        !k8s_b.snapshot().0.contains_key("Kubernetes//Pod/shop/web-0")
    })
    .await;
    wait_same("after the delete", &k8s_b, &yaml_b, (3, 0)).await;

    // The missing CRD is installed later: its kind is picked up on the watcher's retry.
    both.api.install("gateway.networking.k8s.io/v1", "HTTPRoute");
    both.apply(http_route("shop", "cart"));
    wait_until("the HTTPRoute to serve", Duration::from_secs(35), || k8s_routes(&both.k8s) == Some(1)).await;
    wait_same("with the route", &k8s_a, &yaml_a, (4, 2)).await;
}

fn k8s_routes(cp: &Cp) -> Option<u64> {
    let admin = cp.admin;
    // A blocking request: `wait_until` polls from a sync closure.
    let mut conn = std::net::TcpStream::connect(admin).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    std::io::Write::write_all(&mut conn, b"GET /status HTTP/1.0\r\nHost: cp\r\n\r\n").ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut conn, &mut text).ok()?;
    let status: Value = serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()?;
    status["served"]["http_routes"].as_u64()
}

fn http_route(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns, "uid": uuid(&format!("route/{ns}/{name}")), "generation": 1,
            "resourceVersion": "1", "creationTimestamp": "2026-11-30T10:00:00Z"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": name, "port": 80}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"group": "", "kind": "Service", "name": name, "port": 80, "weight": 1}]}]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_410_gone_loses_nothing() {
    let both = Both::start(&cluster()).await;
    let (k8s, yaml) = (Agent::of(&both.k8s, "node-a").await, Agent::of(&both.yaml, "node-a").await);
    wait_same("at the start", &k8s, &yaml, (5, 2)).await;
    let lists_before = pod_lists(&both.api);
    // List, then watch from the list's version, with bookmarks.
    let requests = both.api.requests();
    let watch = requests
        .iter()
        .find(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
        .unwrap_or_else(|| panic!("no watch of pods: {requests:?}"));
    assert!(watch.contains("allowWatchBookmarks=true") && watch.contains("resourceVersion="), "{watch}");

    // Changes no watch sees (compacted away), then 410 Gone mid-stream: only a re-list finds them.
    both.apply_unseen(pod("shop", "cart-1", "node-a", "10.244.1.11", "cart"));
    both.apply_unseen(namespace("other", true));
    both.delete_unseen_pod("shop", "web-0");
    both.api.expire();
    wait_until("the re-list to find the changes", WAIT, || {
        let (addresses, _) = k8s.snapshot();
        addresses.contains_key("Kubernetes//Pod/shop/cart-1")
            && !addresses.contains_key("Kubernetes//Pod/shop/web-0")
    })
    .await;
    wait_same("after the re-list", &k8s, &yaml, (5, 2)).await;
    assert!(pod_lists(&both.api) > lists_before, "pods were listed again: {:?}", both.api.requests());

    // Dropped watch connections: the watchers come back from their resource version.
    both.api.drop_connections();
    both.apply(pod("shop", "cart-2", "node-a", "10.244.1.12", "cart"));
    wait_until("the change after dropped connections", WAIT, || {
        k8s.snapshot().0.contains_key("Kubernetes//Pod/shop/cart-2")
    })
    .await;
    wait_same("after dropped connections", &k8s, &yaml, (6, 2)).await;
    let status = both.k8s.status().await;
    assert_eq!(status["served"]["input_errors"], json!([]), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_object_is_reported_with_its_field_and_the_rest_serves() {
    let mut objects = cluster();
    objects.push(authorization_policy("shop", "bad", "PERMIT"));
    let both = Both::start(&objects).await;
    let (k8s, yaml) = (Agent::of(&both.k8s, "node-a").await, Agent::of(&both.yaml, "node-a").await);
    wait_same("with a bad policy", &k8s, &yaml, (5, 2)).await;
    let status = both.k8s.status().await;
    let errors = status["served"]["input_errors"].as_array().expect("errors").clone();
    assert_eq!(errors.len(), 1, "{status}");
    assert_eq!(errors[0]["file"], "kubernetes:AuthorizationPolicy/shop/bad", "{status}");
    assert_eq!(errors[0]["field"], "spec.action", "{status}");

    // Fixed through the API server: the error clears and the policy serves.
    assert!(!k8s.snapshot().1.contains_key("shop/bad"));
    both.apply(authorization_policy("shop", "bad", "DENY"));
    wait_until("the fixed policy to serve", WAIT, || k8s.snapshot().1.contains_key("shop/bad")).await;
    wait_same("after the fix", &k8s, &yaml, (5, 3)).await;
    let status = both.k8s.status().await;
    assert_eq!(status["served"]["input_errors"], json!([]), "{status}");
}

impl Both {
    /// Deletes a pod without any watch seeing it (history compacted).
    fn delete_unseen_pod(&self, ns: &str, name: &str) {
        std::fs::remove_file(self.dir.path().join(format!("pod-{ns}-{name}.yaml"))).expect("remove");
        self.api.delete_unseen("v1", "Pod", Some(ns), name);
    }
}

fn pod_lists(api: &ApiServer) -> usize {
    api.requests().iter().filter(|r| r.starts_with("GET /api/v1/pods") && !r.contains("watch=")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_served_before_the_pods_are_listed() {
    let api = ApiServer::start().expect("api server double");
    for object in cluster() {
        api.apply(object);
    }
    // Pods cannot be listed yet (RBAC not there yet, say); no CRD is installed at all.
    api.uninstall("v1", "Pod");
    for (version, kind) in [
        ("security.istio.io/v1", "AuthorizationPolicy"),
        ("security.istio.io/v1", "PeerAuthentication"),
        ("networking.istio.io/v1", "DestinationRule"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("nodemesh.io/v1alpha1", "TrafficPolicy"),
    ] {
        api.uninstall(version, kind);
    }
    let config = kube::Config::new(api.url().parse().expect("url"));
    let cp = Cp::spawn(Source::Kubernetes(KubernetesSettings {
        config: Some(Box::new(config)),
        istio_dataplane_mode: false,
    }))
    .await;
    // An empty world served now would take every pod away from the agents.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(cp.try_status().await.is_none(), "serving before the pods were listed");
    api.install("v1", "Pod");
    cp.wait_serving(Duration::from_secs(10)).await;
    let agent = Agent::of(&cp, "node-a").await;
    wait_until("the pods", WAIT, || agent.snapshot().0.contains_key("Kubernetes//Pod/shop/cart-0")).await;
    let status = cp.status().await;
    assert_eq!(status["served"]["authorizations"], 0, "{status}");
}
