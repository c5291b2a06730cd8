//! The input directory: YAML files (several documents each), re-read when they change.
//!
//! A file that does not parse or validate is rejected whole and reported with its file,
//! document, object and field; the objects it last held keep serving, so one bad edit never
//! takes anything away. The same object defined in two files is reported in the second and
//! kept from the first.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::model::{AuthorizationPolicy, Namespace, Object, ObjectKey, Pod, Service, parse_document};

/// A rejected file: why, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{file}: document {document}{}: {field}: {message}", object.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
pub struct InputError {
    pub file: String,
    /// 1-based.
    pub document: usize,
    pub object: Option<String>,
    pub field: String,
    pub message: String,
}

/// Everything the store holds, merged across files.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    pub policies: Vec<Arc<AuthorizationPolicy>>,
}

struct FileState {
    fingerprint: (u64, i64, i64, u64),
    /// The last version of the file that was accepted.
    objects: Vec<Object>,
    error: Option<InputError>,
}

pub struct Store {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    duplicates: Vec<InputError>,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned(), files: BTreeMap::new(), duplicates: Vec::new() }
    }

    /// Re-reads what changed; returns whether the accepted objects may have changed.
    pub fn scan(&mut self) -> std::io::Result<bool> {
        let mut seen = BTreeSet::new();
        let mut changed = false;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if !yaml || !path.is_file() {
                continue;
            }
            seen.insert(path.clone());
            let meta = fs::metadata(&path)?;
            let fingerprint = (meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino());
            if self.files.get(&path).is_some_and(|f| f.fingerprint == fingerprint) {
                continue;
            }
            let text = fs::read_to_string(&path)?;
            let previous = self.files.remove(&path);
            let state = match parse_file(&path, &text) {
                Ok(objects) => {
                    tracing::info!(file = %path.display(), objects = objects.len(), "input accepted");
                    FileState { fingerprint, objects, error: None }
                }
                Err(error) => {
                    tracing::error!(%error, "input rejected; its last good objects keep serving");
                    FileState {
                        fingerprint,
                        objects: previous.map(|p| p.objects).unwrap_or_default(),
                        error: Some(error),
                    }
                }
            };
            self.files.insert(path, state);
            changed = true;
        }
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !seen.contains(*p)).cloned().collect();
        for path in gone {
            tracing::info!(file = %path.display(), "input removed");
            self.files.remove(&path);
            changed = true;
        }
        Ok(changed)
    }

    /// The accepted objects of every file, merged (first definition wins).
    pub fn inputs(&mut self) -> Inputs {
        let mut inputs = Inputs::default();
        let mut defined: BTreeMap<ObjectKey, PathBuf> = BTreeMap::new();
        self.duplicates.clear();
        for (path, file) in &self.files {
            for object in &file.objects {
                let key = object.key();
                if let Some(first) = defined.get(&key) {
                    self.duplicates.push(InputError {
                        file: path.display().to_string(),
                        document: 0,
                        object: Some(key.to_string()),
                        field: "metadata.name".into(),
                        message: format!("already defined in {}; this one is ignored", first.display()),
                    });
                    continue;
                }
                defined.insert(key, path.clone());
                match object.clone() {
                    Object::Namespace(ns) => {
                        inputs.namespaces.insert(ns.metadata.name.clone(), ns);
                    }
                    Object::Pod(pod) => inputs.pods.push(pod),
                    Object::Service(svc) => inputs.services.push(svc),
                    Object::AuthorizationPolicy(p) => inputs.policies.push(p),
                }
            }
        }
        inputs
    }

    /// Every current problem with the input.
    pub fn errors(&self) -> Vec<InputError> {
        self.files.values().filter_map(|f| f.error.clone()).chain(self.duplicates.iter().cloned()).collect()
    }
}

fn parse_file(path: &Path, text: &str) -> Result<Vec<Object>, InputError> {
    let file = path.display().to_string();
    let mut objects = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let at = |object: Option<String>, field: String, message: String| InputError {
            file: file.clone(),
            document: i + 1,
            object,
            field,
            message,
        };
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| at(None, "(document)".into(), e.to_string()))?;
        let name = describe(&value);
        if let Some(object) = parse_document(value).map_err(|e| at(name, e.field, e.message))? {
            objects.push(object);
        }
    }
    Ok(objects)
}

/// "Pod shop/cart-0", from whatever parses, to say which object a failed document is.
fn describe(doc: &serde_yaml::Value) -> Option<String> {
    let kind = doc.get("kind")?.as_str()?;
    let meta = doc.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    Some(match meta.get("namespace").and_then(serde_yaml::Value::as_str) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop, uid: 0a1b}\nspec: {nodeName: n1}\n";

    #[test]
    fn a_bad_file_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pods.yaml");
        fs::write(&file, format!("{POD}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n"))
            .expect("write");
        let mut store = Store::new(dir.path());
        assert!(store.scan().expect("scan"));
        assert_eq!(store.inputs().pods.len(), 1);

        // A broken second document: the file is rejected, the pod stays.
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(&file, format!("{POD}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: shop}}\nspec: {{ports: [{{port: 0}}]}}\n")).expect("write");
        assert!(store.scan().expect("scan"));
        let errors = store.errors();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].document, 2);
        assert_eq!(errors[0].field, "spec.ports[0].port");
        assert_eq!(errors[0].object.as_deref(), Some("Service shop/s"));
        assert!(errors[0].to_string().contains("pods.yaml: document 2 (Service shop/s): spec.ports[0].port"));
        let inputs = store.inputs();
        assert_eq!(inputs.pods.len(), 1);
        assert_eq!(inputs.namespaces.len(), 1, "the namespace from the last good version stays");
        assert!(inputs.services.is_empty());
    }

    #[test]
    fn duplicates_are_reported_and_the_first_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a.yaml"), POD).expect("write");
        fs::write(dir.path().join("b.yaml"), POD.replace("nodeName: n1", "nodeName: n2")).expect("write");
        let mut store = Store::new(dir.path());
        store.scan().expect("scan");
        let inputs = store.inputs();
        assert_eq!(inputs.pods.len(), 1);
        assert_eq!(inputs.pods[0].spec.node_name.as_deref(), Some("n1"));
        assert!(store.errors()[0].file.ends_with("b.yaml"));
    }

    #[test]
    fn yaml_syntax_errors_are_located() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("bad.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n")
            .expect("write");
        let mut store = Store::new(dir.path());
        store.scan().expect("scan");
        let e = &store.errors()[0];
        assert_eq!((e.document, e.field.as_str()), (1, "(document)"));
        assert!(e.message.contains("line"), "{e}");
    }
}
