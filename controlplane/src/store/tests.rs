//! The store against a real directory: per-file errors, mid-write files, errors clearing,
//! and clashes by arrival.

use super::*;
use crate::world::{MeshSettings, World};

fn pod(name: &str, uid: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: {uid}}}\n\
         spec: {{nodeName: n1}}\nstatus: {{podIP: \"{ip}\"}}\n"
    )
}

const POD: &str =
    "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop, uid: 0a1b}\nspec: {nodeName: n1}\n";
const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

struct Dir {
    dir: tempfile::TempDir,
    store: Store,
}

impl Dir {
    /// Files are read as soon as they are seen (no settling): these tests are about content.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::with_settle(dir.path(), Duration::ZERO);
        Self { dir, store }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        fs::write(self.path(name), text).expect("write");
    }

    /// Atomically, as controllers write.
    fn replace(&self, name: &str, text: &str) {
        let tmp = self.path(&format!(".{name}.tmp"));
        fs::write(&tmp, text).expect("write");
        fs::rename(&tmp, self.path(name)).expect("rename");
    }

    fn remove(&self, name: &str) {
        fs::remove_file(self.path(name)).expect("remove");
    }

    fn scan(&mut self) -> Scanned {
        self.store.scan(&Hints::none()).expect("scan")
    }

    fn errors(&mut self) -> Vec<InputError> {
        self.store.inputs();
        self.store.errors()
    }

    fn pods(&mut self) -> Vec<String> {
        self.store.inputs().pods.iter().map(|p| p.metadata.name.clone()).collect()
    }
}

#[test]
fn a_bad_file_keeps_its_last_good_objects() {
    let mut d = Dir::new();
    d.write("pods.yaml", &format!("{POD}---\n{NAMESPACE}"));
    assert!(d.scan().changed);
    assert_eq!(d.store.inputs().pods.len(), 1);

    // A broken second document: the file is rejected, the pod stays.
    d.write("pods.yaml", &format!("{POD}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: shop}}\nspec: {{ports: [{{port: 0}}]}}\n"));
    assert!(d.scan().changed);
    let errors = d.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].document, 2);
    assert_eq!(errors[0].error.field, "spec.ports[0].port");
    assert_eq!(errors[0].object.as_deref(), Some("Service shop/s"));
    assert!(errors[0].to_string().contains("pods.yaml: document 2 (Service shop/s): spec.ports[0].port"));
    let inputs = d.store.inputs();
    assert_eq!(inputs.pods.len(), 1);
    assert_eq!(inputs.namespaces.len(), 1, "the namespace from the last good version stays");
    assert!(inputs.services.is_empty());
}

#[test]
fn yaml_syntax_errors_are_located() {
    let mut d = Dir::new();
    d.write("bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n");
    d.scan();
    let e = &d.errors()[0];
    assert_eq!((e.document, e.error.field.as_str()), (1, "(document)"));
    assert!(e.error.message.contains("line"), "{e}");
}

/// A file that cannot be read, or fails the precheck, is that file's error: the other
/// files are read, and its last good objects keep serving.
#[test]
fn a_file_that_fails_to_read_is_its_own_error() {
    let mut d = Dir::new();
    d.write("a.yaml", &pod("a", "0a", "10.0.0.1"));
    d.write("b.yaml", &pod("b", "0b", "10.0.0.2"));
    d.scan();
    assert_eq!(d.pods(), ["a", "b"]);

    let cases: [(&[u8], &str); 5] = [
        (b"kind: Pod\nmetadata: {name: \xff}\n", "not UTF-8 (an invalid byte at offset 27, line 2)"),
        (b"", "holds no documents"),
        (b"---\n# nothing\n...\n", "delete the file"),
        (b"a: &x [1]\nb: *x\n", "line 1, column 4: YAML anchor `&x`"),
        (b"kind: Pod\nmetadata: {name: a", "does not end with a newline"),
    ];
    for (bytes, expected) in cases {
        fs::write(d.path("a.yaml"), bytes).expect("write");
        d.write("c.yaml", &pod("c", "0c", "10.0.0.3"));
        assert!(d.scan().changed);
        let errors = d.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].file.ends_with("a.yaml"));
        assert_eq!((errors[0].document, errors[0].error.field.as_str()), (0, "(file)"));
        assert!(errors[0].error.message.contains(expected), "{}", errors[0]);
        assert!(!errors[0].to_string().contains("document 0"), "{}", errors[0]);
        assert_eq!(d.pods(), ["a", "b", "c"], "a's last good pod stays; c is read");
        d.remove("c.yaml");
    }
}

#[test]
fn a_file_that_cannot_be_opened_is_its_own_error() {
    let mut d = Dir::new();
    d.write("a.yaml", &pod("a", "0a", "10.0.0.1"));
    std::os::unix::fs::symlink("loop.yaml", d.path("loop.yaml")).expect("symlink");
    d.scan();
    let errors = d.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].file.ends_with("loop.yaml") && errors[0].error.message.contains("cannot read it"));
    assert_eq!(d.pods(), ["a"]);
    assert!(!d.scan().changed, "the same problem again is no change");
}

#[test]
fn a_file_changed_just_now_waits_for_its_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pods.yaml");
    fs::write(&path, pod("a", "0a", "10.0.0.1")).expect("write");
    let changed_at = Fingerprint::stat(&path).expect("stat").0.changed_at();
    let mut store = Store::new(dir.path());
    let at = |after_ms: u64, complete: &[&Path]| Hints {
        complete: complete.iter().map(|p| p.to_path_buf()).collect(),
        now: changed_at + Duration::from_millis(after_ms),
    };

    // 10 ms after the change, with no word from the writer: not read, look again soon.
    let scanned = store.scan(&at(10, &[])).expect("scan");
    assert!(!scanned.changed);
    let again = scanned.again_in.expect("asks to be run again");
    assert!(again <= SETTLE - Duration::from_millis(10), "{again:?}");
    assert!(store.inputs().pods.is_empty());
    // Once it has settled, it is read.
    let scanned = store.scan(&at(150, &[])).expect("scan");
    assert_eq!(scanned, Scanned { changed: true, again_in: None });
    assert_eq!(store.inputs().pods.len(), 1);

    // Word that the writer is done (closed, or renamed into place): read at once.
    fs::write(&path, pod("b", "0b", "10.0.0.2")).expect("write");
    let changed_at = Fingerprint::stat(&path).expect("stat").0.changed_at();
    let now = Hints { complete: HashSet::new(), now: changed_at };
    assert!(!store.scan(&now).expect("scan").changed);
    let done = Hints { complete: [path.clone()].into(), now: changed_at };
    assert!(store.scan(&done).expect("scan").changed);
    assert_eq!(store.inputs().pods[0].metadata.name, "b");
}

#[test]
fn a_file_written_in_place_is_read_once_it_settles() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Cut mid-write at a newline: it would parse, as a pod without its labels.
    let path = dir.path().join("pods.yaml");
    fs::write(&path, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: shop\n").expect("write");
    let mut store = Store::with_settle(dir.path(), Duration::from_secs(3600));
    let scanned = store.scan(&Hints::none()).expect("scan");
    assert!(!scanned.changed && scanned.again_in.is_some());
    assert!(store.inputs().pods.is_empty() && store.errors().is_empty());
}

#[test]
fn errors_clear_when_the_same_good_bytes_come_back() {
    let mut d = Dir::new();
    let good = pod("a", "0a", "10.0.0.1");
    d.write("pods.yaml", &good);
    d.scan();
    d.write("pods.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: A}\n");
    d.scan();
    assert_eq!(d.errors().len(), 1);
    d.write("pods.yaml", &good);
    assert!(d.scan().changed);
    assert_eq!(d.errors(), []);
    assert_eq!(d.pods(), ["a"]);
}

#[test]
fn deleting_a_file_removes_its_objects_and_its_errors() {
    let mut d = Dir::new();
    d.write("pods.yaml", &pod("a", "0a", "10.0.0.1"));
    d.scan();
    d.write("pods.yaml", "not: [yaml\n");
    d.scan();
    assert_eq!((d.errors().len(), d.pods().len()), (1, 1));
    d.remove("pods.yaml");
    assert!(d.scan().changed);
    assert_eq!(d.errors(), []);
    assert!(d.pods().is_empty(), "deleting is how a file's objects are removed");
    d.write("pods.yaml", &pod("b", "0b", "10.0.0.2"));
    d.scan();
    assert_eq!((d.errors().len(), d.pods()), (0, vec!["b".to_owned()]));
}

#[test]
fn errors_clear_when_a_file_is_renamed() {
    let mut d = Dir::new();
    d.write("pods.yaml", &pod("a", "0a", "10.0.0.1"));
    d.scan();
    d.write("pods.yaml", "not: [yaml\n");
    d.scan();
    assert_eq!(d.errors().len(), 1);
    // A good version renamed over it.
    d.replace("pods.yaml", &pod("b", "0b", "10.0.0.2"));
    d.scan();
    assert_eq!((d.errors(), d.pods()), (vec![], vec!["b".to_owned()]));
    // A bad version renamed away (out of the inputs).
    d.write("pods.yaml", "not: [yaml\n");
    d.scan();
    assert_eq!(d.errors().len(), 1);
    fs::rename(d.path("pods.yaml"), d.path("pods.yaml.bak")).expect("rename");
    d.scan();
    assert_eq!((d.errors(), d.pods()), (vec![], Vec::<String>::new()));
}

fn refused(errors: &[InputError], file: &str, field: &str) -> InputError {
    let found: Vec<&InputError> = errors.iter().filter(|e| e.file.ends_with(file)).collect();
    assert_eq!(found.len(), 1, "{errors:?}");
    assert_eq!(found[0].error.field, field, "{}", found[0]);
    found[0].clone()
}

#[test]
fn the_first_definition_wins_whatever_the_file_names() {
    let mut d = Dir::new();
    d.write("z.yaml", POD);
    d.scan();
    let incumbent = Arc::clone(&d.store.inputs().pods[0]);
    d.write("a.yaml", &POD.replace("nodeName: n1", "nodeName: n2"));
    d.scan();
    let inputs = d.store.inputs();
    assert_eq!(inputs.pods.len(), 1);
    assert!(Arc::ptr_eq(&inputs.pods[0], &incumbent), "the incumbent in z.yaml still wins");
    let e = refused(&d.store.errors(), "a.yaml", "metadata.name");
    assert_eq!((e.document, e.object.as_deref()), (1, Some("Pod shop/p")));
    assert!(
        e.error.message.contains("already defined by Pod shop/p (")
            && e.error.message.contains("z.yaml, document 1)")
    );

    // The newcomer goes: nothing about the incumbent changes.
    d.remove("a.yaml");
    d.scan();
    let inputs = d.store.inputs();
    assert!(Arc::ptr_eq(&inputs.pods[0], &incumbent));
    assert_eq!(d.store.errors(), []);

    // Read in the same scan, file order decides; so does document order within a file.
    let mut d = Dir::new();
    d.write("b.yaml", POD);
    d.write("a.yaml", &format!("{}---\n{POD}", POD.replace("nodeName: n1", "nodeName: n2")));
    d.scan();
    let inputs = d.store.inputs();
    assert_eq!(inputs.pods[0].spec.node_name.as_deref(), Some("n2"));
    let errors = d.store.errors();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!((errors[0].document, errors[1].document), (2, 1));
}

#[test]
fn an_incumbent_keeps_its_place_when_edited_or_moved() {
    let mut d = Dir::new();
    d.write("z.yaml", &pod("p", "0a", "10.0.0.1"));
    d.scan();
    d.write("a.yaml", &pod("p", "0b", "10.0.0.2"));
    d.scan();
    // Edited: still first.
    d.write("z.yaml", &pod("p", "0a", "10.0.0.1").replace("n1", "n3"));
    d.scan();
    assert_eq!(d.store.inputs().pods[0].spec.node_name.as_deref(), Some("n3"));
    // Its file renamed (it leaves z.yaml and turns up in y.yaml in one scan): still first.
    fs::rename(d.path("z.yaml"), d.path("y.yaml")).expect("rename");
    d.scan();
    assert_eq!(d.store.inputs().pods[0].metadata.uid.as_deref(), Some("0a"));
    refused(&d.store.errors(), "a.yaml", "metadata.name");
}

#[test]
fn a_pod_address_is_held_by_the_first_pod() {
    let mut d = Dir::new();
    d.write("z.yaml", &pod("a", "0a", "10.0.0.1"));
    d.scan();
    // The same address, IPv4-mapped.
    d.write("a.yaml", &pod("b", "0b", "::ffff:10.0.0.1"));
    d.scan();
    assert_eq!(d.pods(), ["a"]);
    let e = refused(&d.store.errors(), "a.yaml", "status.podIP");
    assert!(e.error.message.contains("10.0.0.1 is already the address of Pod shop/a"), "{e}");
    assert_eq!(e.object.as_deref(), Some("Pod shop/b"));

    // A refused pod makes no workload at all.
    let world = World::build(&d.store.inputs(), &MeshSettings::default(), 1, None);
    assert!(world.addresses.contains_key("Kubernetes//Pod/shop/a"));
    assert!(!world.addresses.contains_key("Kubernetes//Pod/shop/b"));

    // The incumbent moves to a free address: the newcomer now gets its own.
    d.write("z.yaml", &pod("a", "0a", "10.0.0.9"));
    d.scan();
    assert_eq!(d.pods(), ["b", "a"]);
    assert_eq!(d.store.errors(), []);
    // It moves back: now it is the newcomer for that address.
    d.write("z.yaml", &pod("a", "0a", "10.0.0.1"));
    d.scan();
    assert_eq!(d.pods(), ["b"]);
    refused(&d.store.errors(), "z.yaml", "status.podIP");
}

#[test]
fn a_pod_uid_is_held_by_the_first_pod() {
    let mut d = Dir::new();
    d.write("z.yaml", &pod("a", "0a1b", "10.0.0.1"));
    d.scan();
    d.write("a.yaml", &pod("b", "0A1B", "10.0.0.2"));
    d.scan();
    assert_eq!(d.pods(), ["a"]);
    let e = refused(&d.store.errors(), "a.yaml", "metadata.uid");
    assert!(
        e.error.message.contains("UID 0a1b is already Pod shop/a (") && e.error.message.contains("z.yaml"),
        "{e}"
    );
}

#[test]
fn a_service_address_may_not_be_a_pod_address_in_either_order() {
    let service = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: shop}}\n\
             spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
        )
    };
    let mut d = Dir::new();
    d.write("z.yaml", &pod("a", "0a", "10.0.0.1"));
    d.scan();
    d.write("a.yaml", &service("10.0.0.1"));
    d.scan();
    let inputs = d.store.inputs();
    assert_eq!((inputs.pods.len(), inputs.services.len()), (1, 0));
    let e = refused(&d.store.errors(), "a.yaml", "spec.clusterIP");
    assert!(
        e.error.message.contains("Pod shop/a") && e.error.message.contains("this Service is refused"),
        "{e}"
    );

    let mut d = Dir::new();
    d.write("z.yaml", &service("10.0.0.1"));
    d.scan();
    d.write("a.yaml", &pod("a", "0a", "10.0.0.1"));
    d.scan();
    let inputs = d.store.inputs();
    assert_eq!((inputs.pods.len(), inputs.services.len()), (0, 1));
    let e = refused(&d.store.errors(), "a.yaml", "status.podIP");
    assert!(e.error.message.contains("Service shop/s"), "{e}");
}

#[test]
fn host_network_pods_on_one_node_share_its_address() {
    let host = |name: &str, uid: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: {uid}}}\n\
             spec: {{nodeName: {node}, hostNetwork: true}}\nstatus: {{podIP: 192.168.0.1}}\n"
        )
    };
    let mut d = Dir::new();
    d.write("a.yaml", &format!("{}---\n{}", host("a", "0a", "n1"), host("b", "0b", "n1")));
    d.scan();
    assert_eq!(d.pods(), ["a", "b"]);
    d.write("c.yaml", &host("c", "0c", "n2"));
    d.scan();
    assert_eq!(d.pods(), ["a", "b"], "another node's pod cannot have n1's address");
    refused(&d.store.errors(), "c.yaml", "status.podIP");
}

/// Tools that keep times (`cp -p`, `rsync -t`, `tar`) can give a new version the size and
/// mtime of the one before; the change time still tells them apart.
#[test]
fn a_fix_with_the_same_size_and_mtime_is_still_read() {
    let mut d = Dir::new();
    let good = pod("a", "0a", "10.0.0.1");
    let bad = good.replace("name: a,", "name: A,");
    d.write("pods.yaml", &good);
    d.scan();
    d.write("pods.yaml", &bad);
    d.scan();
    assert_eq!(d.errors().len(), 1);
    let mtime = fs::metadata(d.path("pods.yaml")).expect("stat").modified().expect("mtime");
    std::thread::sleep(Duration::from_millis(20));
    d.write("pods.yaml", &good);
    fs::File::options()
        .write(true)
        .open(d.path("pods.yaml"))
        .expect("open")
        .set_modified(mtime)
        .expect("mtime");
    assert!(d.scan().changed);
    assert_eq!(d.errors(), []);
}

fn rule(name: &str, host: &str, policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{host: {host}, trafficPolicy: {policy}}}\n"
    )
}

#[test]
fn a_second_rule_or_policy_for_a_service_is_refused_until_the_first_goes() {
    let mut d = Dir::new();
    d.write("z.yaml", &rule("first", "cart", "{loadBalancer: {simple: RANDOM}}"));
    d.scan();
    // Another form of the same host, in a file that sorts first: still second.
    d.write(
        "a.yaml",
        &rule("second", "cart.shop.svc.cluster.local", "{loadBalancer: {simple: ROUND_ROBIN}}"),
    );
    d.scan();
    let names = |inputs: &Inputs| -> Vec<String> {
        inputs.destination_rules.iter().map(|r| r.metadata.name.clone()).collect()
    };
    assert_eq!(names(&d.store.inputs()), ["first"]);
    let e = refused(&d.store.errors(), "a.yaml", "spec.host");
    assert!(
        e.error.message.contains("cart.shop.svc.cluster.local already has DestinationRule shop/first (")
            && e.error.message.contains("this DestinationRule is refused"),
        "{e}"
    );
    d.remove("z.yaml");
    d.scan();
    assert_eq!(names(&d.store.inputs()), ["second"]);
    assert_eq!(d.store.errors(), []);

    let policy = |name: &str| {
        format!(
            "apiVersion: nodemesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{targetRef: {{kind: Service, name: cart}}, rateLimits: [{{maxConcurrent: 1}}]}}\n"
        )
    };
    d.write("p.yaml", &format!("{}---\n{}", policy("one"), policy("two")));
    d.scan();
    assert_eq!(d.store.inputs().traffic_policies.len(), 1);
    assert_eq!(refused(&d.store.errors(), "p.yaml", "spec.targetRef").document, 2);
}

#[test]
fn a_bad_rule_keeps_the_last_good_one_serving() {
    let mut d = Dir::new();
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {topology.kubernetes.io/zone: a}}\n";
    d.write(
        "rules.yaml",
        &format!("{}---\n{node}", rule("cart", "cart", "{loadBalancer: {simple: RANDOM}}")),
    );
    d.scan();
    let good = d.store.inputs();
    assert_eq!((good.destination_rules.len(), good.nodes.len()), (1, 1));
    d.write("rules.yaml", &rule("cart", "cart", "{tls: {mode: ISTIO_MUTUAL}}"));
    d.scan();
    let e = refused(&d.errors(), "rules.yaml", "spec.trafficPolicy.tls");
    assert!(e.error.message.contains("Nodemesh does not support this at L4"), "{e}");
    let inputs = d.store.inputs();
    assert!(
        Arc::ptr_eq(&inputs.destination_rules[0], &good.destination_rules[0]),
        "the last good rule serves"
    );
    assert!(Arc::ptr_eq(&inputs.nodes["n1"], &good.nodes["n1"]), "and the file's node");
}
