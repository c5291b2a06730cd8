//! The last accepted state on disk, written atomically (a new file renamed over the old,
//! both synced), so a restarted agent serves it while the control plane is unreachable.
//!
//! The file is an envelope around the protobuf `Snapshot`: a magic number, the payload's
//! length and its CRC-32, so an empty, truncated or corrupted file, or a file that is not a
//! snapshot at all, is told apart from a real state (protobuf alone would decode a truncated
//! or empty message as a smaller, valid one).

use std::{
    fs::{self, File},
    io::{self, Read as _, Write as _},
    path::Path,
};

use nodemesh_proto::{nodemesh::v1::Snapshot, prost::Message as _};

/// "NMSNAP" and the envelope's version.
const MAGIC: [u8; 8] = *b"NMSNAP\0\x01";
/// Magic, length (u64 LE), CRC-32 (u32 LE).
const HEADER: usize = 8 + 8 + 4;
/// Far above any real state (10,000 workloads take a few MB); a larger file is not ours.
const MAX_BYTES: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a snapshot: {why}")]
    NotASnapshot { path: String, why: String },
}

pub fn save(path: &Path, snapshot: &Snapshot) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(&encode(snapshot))?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced.
    File::open(dir)?.sync_all()
}

/// The bytes of a snapshot file.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    envelope(&snapshot.encode_to_vec())
}

/// A snapshot file around an encoded `Snapshot`.
pub fn envelope(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The snapshot at `path`; `None` if there is none. Anything else than a whole snapshot is
/// an error, never an empty state.
pub fn load(path: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    let display = || path.display().to_string();
    let read_err = |source| SnapshotError::Read { path: display(), source };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    decode(&bytes).map(Some).map_err(|why| SnapshotError::NotASnapshot { path: display(), why })
}

/// Decodes a snapshot file's bytes (also what the fuzz target drives).
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    if bytes.len() < HEADER || bytes[..8] != MAGIC {
        return Err("no snapshot header (written by another program, or an older agent)".into());
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| "header")?);
    let crc = u32::from_le_bytes(bytes[16..20].try_into().map_err(|_| "header")?);
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(format!("truncated or padded: {} payload bytes, the header says {len}", payload.len()));
    }
    if crc32fast::hash(payload) != crc {
        return Err("the checksum does not match: the file is corrupt".into());
    }
    Snapshot::decode(payload).map_err(|e| format!("the payload does not decode: {e}"))
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

    #[test]
    fn anything_but_a_whole_snapshot_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot.pb");
        let snap = Snapshot { accepted_unix_seconds: 42, control_plane: "cp".into(), ..Default::default() };
        let good = encode(&snap);
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let cases: [(&str, Vec<u8>); 5] = [
            ("empty", Vec::new()),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("corrupt", flipped),
            ("a bare protobuf", snap.encode_to_vec()),
            ("text", b"not a snapshot\n".to_vec()),
        ];
        for (what, bytes) in cases {
            fs::write(&path, &bytes).expect("write");
            let e = load(&path).expect_err(what);
            assert!(matches!(e, SnapshotError::NotASnapshot { .. }), "{what}: {e}");
        }
        fs::write(&path, &good).expect("write");
        assert_eq!(load(&path).expect("load"), Some(snap));
    }
}
