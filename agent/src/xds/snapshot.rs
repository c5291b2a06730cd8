//! The last accepted state on disk, written atomically (a new file renamed over the old,
//! both synced), so a restarted agent serves it while the control plane is unreachable.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    path::Path,
};

use nodemesh_proto::{nodemesh::v1::Snapshot, prost::Message as _};

pub fn save(path: &Path, snapshot: &Snapshot) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(&snapshot.encode_to_vec())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced.
    File::open(dir)?.sync_all()
}

pub fn load(path: &Path) -> io::Result<Option<Snapshot>> {
    match fs::read(path) {
        Ok(bytes) => Snapshot::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/snapshot.pb");
        assert!(load(&path).expect("load").is_none());
        let snap = Snapshot { accepted_unix_seconds: 42, control_plane: "cp".into(), ..Default::default() };
        save(&path, &snap).expect("save");
        assert_eq!(load(&path).expect("load"), Some(snap.clone()));
        let newer = Snapshot { accepted_unix_seconds: 43, ..snap };
        save(&path, &newer).expect("save");
        assert_eq!(load(&path).expect("load"), Some(newer));
        assert!(!path.with_extension("tmp").exists());
        fs::write(&path, b"\xff\xff\xff").expect("write");
        assert!(load(&path).is_err(), "a corrupt file is an error, not an empty state");
    }
}
