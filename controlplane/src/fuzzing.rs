//! What the `controlplane_yaml` fuzz target (fuzz/) runs: the control plane's whole input path
//! on one or two files (the input split at its first NUL byte, which YAML never holds): the
//! bounded read and lexical precheck, the parse of every document, clashes across files, and
//! the world built from what is accepted. It must return for any input, quickly and without
//! panicking.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use crate::{
    store::{Hints, Store},
    world::{MeshSettings, World},
};

/// A directory of this process's and thread's own (fuzzers run one input at a time per thread).
fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "nodemesh-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ))
}

pub fn yaml_directory(data: &[u8]) {
    let dir = scratch_dir();
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let (first, second) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let wrote = std::fs::write(dir.join("a.yaml"), first).is_ok()
        && second.is_none_or(|s| std::fs::write(dir.join("b.yaml"), s).is_ok());
    if !wrote {
        return;
    }
    let mut store = Store::with_settle(&dir, Duration::ZERO);
    if store.scan(&Hints::none()).is_err() {
        return;
    }
    let inputs = store.inputs();
    let _ = store.errors();
    let mut uids = HashSet::new();
    for pod in &inputs.pods {
        if let Some(uid) = &pod.metadata.uid {
            assert!(uids.insert(uid.clone()), "two accepted pods share the UID {uid}");
        }
    }
    let _ = World::build(&inputs, &MeshSettings::default(), 1, None);
    let _ = std::fs::remove_dir_all(&dir);
}
