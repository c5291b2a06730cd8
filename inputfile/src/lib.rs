//! Reading one YAML input file, bounded: before serde_yaml sees a byte, the file must be a
//! regular file of at most [`Limits::max_bytes`], read whole while nobody changed it, UTF-8,
//! ending with a newline, and pass [`precheck`], a cheap lexical pass that bounds documents,
//! nesting and scalars and refuses anchors and aliases. No input holds the thread for more
//! than a moment: every check is one linear pass that stops at the first problem.
//!
//! Both the control plane (its input directory) and the node agent (its enrollment file) read
//! their files with it. It is a crate of its own, not part of `nodemesh-conventions`: it does
//! I/O (unix file types, `libc` open flags) and is a parser with its own fuzz surface and
//! limits, while the conventions crate is plain data and rules that any side, tool or test can
//! depend on without pulling in a file reader; and a change here is not a change to what the
//! agent and the control plane agree on.
//!
//! ```no_run
//! use nodemesh_input_file::{self as input_file, Limits};
//! # fn main() -> Result<(), input_file::Problem> {
//! let (fingerprint, text) = input_file::read("pods.yaml".as_ref(), &Limits::CONTROL_PLANE)?;
//! input_file::precheck(&text, &Limits::CONTROL_PLANE)?;
//! // ... parse `text`; remember `fingerprint` to skip the file until it changes.
//! # let _ = fingerprint; Ok(()) }
//! ```
//!
//! A [`Problem`]'s message says what is wrong and what to do, without the file's name: the
//! caller says which file it was.

mod lexer;
mod lines;

use std::{
    fs,
    io::{self, Read as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::Path,
    time::{Duration, SystemTime},
};

/// How much one file may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    /// Documents (`---`-separated parts, empty ones included).
    pub max_documents: usize,
    /// Block indentation levels plus `[`/`{` nesting (counted lexically, so an
    /// over-approximation).
    pub max_depth: usize,
    /// The longest line, and the longest quoted, block or multi-line plain scalar.
    pub max_scalar_bytes: usize,
    /// How to empty this kind of source on purpose: an empty file is refused, because a file
    /// caught mid-write (truncated, not yet written) looks exactly like one.
    pub how_to_empty: &'static str,
}

impl Limits {
    /// For the control plane's input directory.
    ///
    /// - 16 MiB per file: the benchmark's whole mesh (10,000 pods and 1,000 services) is
    ///   about 4 MB, and one file of 10,000 pods about 3.3 MB, so this is five times the
    ///   largest file we know of, while the parse of a full file stays well under a second
    ///   and its memory (the parser holds about ten times the text) bounded.
    /// - 10,000 documents: one file of 10,000 pods, the benchmark's whole mesh, fits; each
    ///   document, even an empty one, costs a parser pass.
    /// - depth 32: Kubernetes objects nest about 12 deep (a Pod's
    ///   `spec.affinity.nodeAffinity...matchExpressions[].values[]`), so 32 refuses nothing
    ///   real, and stays far below serde_yaml's own recursion limit (128).
    /// - 256 KiB scalars: Kubernetes caps all of an object's annotations together at 256 KiB
    ///   (the largest strings it stores), so no value it accepts is longer.
    pub const CONTROL_PLANE: Limits = Limits {
        max_bytes: 16 << 20,
        max_documents: 10_000,
        max_depth: 32,
        max_scalar_bytes: 256 << 10,
        how_to_empty: "to remove everything a file defined, delete the file",
    };
}

/// What identifies a version of a file without reading it (`stat`, following symlinks:
/// ConfigMap volumes swap a symlink to a new directory). The change time (`ctime`) is set by
/// the kernel on every write, rename or link change and cannot be set by a user, so a new
/// version always has a new fingerprint even when size and mtime are restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub len: u64,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub inode: u64,
    pub device: u64,
}

impl Fingerprint {
    pub fn of(meta: &fs::Metadata) -> Self {
        Self {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
            device: meta.dev(),
        }
    }

    /// The fingerprint of `path` now (following symlinks), with its metadata.
    pub fn stat(path: &Path) -> io::Result<(Self, fs::Metadata)> {
        let meta = fs::metadata(path)?;
        Ok((Self::of(&meta), meta))
    }

    /// When this version came to be (its change time).
    pub fn changed_at(&self) -> SystemTime {
        let (secs, nanos) = self.ctime;
        let since_epoch = Duration::new(
            u64::try_from(secs).unwrap_or(0),
            u32::try_from(nanos).unwrap_or(0).min(999_999_999),
        );
        SystemTime::UNIX_EPOCH.checked_add(since_epoch).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// Why a file was not accepted. Lowercase messages that say what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read it: {source}")]
    Io {
        #[source]
        source: io::Error,
    },
    #[error("not a regular file; only regular files (or symlinks to them) are read")]
    NotAFile,
    #[error("{len} bytes is more than the {max} one file may hold; split it into several files")]
    TooLarge { len: u64, max: u64 },
    #[error("it changed while being read; it is read again once it settles")]
    ChangedWhileReading,
    #[error("not UTF-8 (an invalid byte at offset {offset}, line {line}); save it as UTF-8")]
    NotUtf8 { offset: usize, line: usize },
    #[error(
        "it does not end with a newline, so it may have been caught mid-write (a file cut off \
         mid-write almost never ends exactly at a newline); write files whole (to a temporary \
         file, then rename it into place) and end them with a newline"
    )]
    NoFinalNewline,
    #[error(
        "it holds no documents (it is empty, or only comments and `---`/`...` separators), which \
         is also what a file caught mid-write looks like, so it is refused; {how_to_empty}"
    )]
    NoDocuments { how_to_empty: &'static str },
    #[error("more than {max} documents; split it into several files")]
    TooManyDocuments { max: usize },
    #[error("line {line}: nested more than {max} levels deep; no Kubernetes object needs that")]
    TooDeep { line: usize, max: usize },
    #[error("line {line}: a line or value longer than {max} bytes, more than any Kubernetes field holds")]
    TooLong { line: usize, max: usize },
    #[error(
        "line {line}: a byte order mark (U+FEFF) starts the line; only the file may start with \
         one; remove it"
    )]
    ByteOrderMark { line: usize },
    #[error(
        "line {line}, column {column}: YAML {what} `{text}`: anchors and aliases are not accepted \
         (Kubernetes manifests never need them, and expanding aliases is how a small file \
         becomes a huge one); write the values out"
    )]
    AnchorOrAlias { line: usize, column: usize, what: &'static str, text: String },
}

impl From<io::Error> for Problem {
    fn from(source: io::Error) -> Self {
        Problem::Io { source }
    }
}

/// Reads `path` whole, if it is a regular file within `limits.max_bytes` that nobody changed
/// while it was read, holds UTF-8, and (unless empty) ends with a newline. Returns the
/// fingerprint of the version read, and the text without any leading byte order mark.
pub fn read(path: &Path, limits: &Limits) -> Result<(Fingerprint, String), Problem> {
    let before = fs::metadata(path)?;
    if !before.is_file() {
        return Err(Problem::NotAFile);
    }
    let fingerprint = Fingerprint::of(&before);
    if before.len() > limits.max_bytes {
        return Err(Problem::TooLarge { len: before.len(), max: limits.max_bytes });
    }
    // Non-blocking: should the path have become a FIFO since the stat, opening it must not
    // wait for a writer (reads of a regular file ignore the flag).
    let mut file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    if Fingerprint::of(&file.metadata()?) != fingerprint {
        return Err(Problem::ChangedWhileReading);
    }
    // At most one byte more than allowed: a file growing meanwhile cannot make us read more.
    let mut bytes = Vec::with_capacity(usize::try_from(before.len()).unwrap_or(0).saturating_add(1));
    file.by_ref().take(limits.max_bytes.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != before.len() || Fingerprint::of(&fs::metadata(path)?) != fingerprint {
        return Err(Problem::ChangedWhileReading);
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..offset].iter().filter(|b| **b == b'\n').count();
        Problem::NotUtf8 { offset, line }
    })?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(Problem::NoFinalNewline);
    }
    // A leading byte order mark is dropped here, so that the parser (libyaml would count it
    // as a column) and `precheck` see the same text.
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    };
    Ok((fingerprint, text))
}

/// The lexical pass before the YAML parser: refuses a text with no documents, too many
/// documents, nesting deeper than `limits.max_depth`, a line or scalar longer than
/// `limits.max_scalar_bytes`, or any anchor (`&x`) or alias (`*x`) outside quoted and block
/// scalars. Linear in the text, and stops at the first problem.
pub fn precheck(text: &str, limits: &Limits) -> Result<(), Problem> {
    lexer::check(text, limits)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        fs::write(&path, bytes).expect("write");
        path
    }

    fn both(path: &Path) -> Result<(Fingerprint, String), Problem> {
        let (fingerprint, text) = read(path, &Limits::CONTROL_PLANE)?;
        precheck(&text, &Limits::CONTROL_PLANE)?;
        Ok((fingerprint, text))
    }

    #[test]
    fn reads_a_good_file_and_fingerprints_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "a.yaml", b"kind: Namespace\nmetadata: {name: a}\n");
        let (fingerprint, text) = both(&path).expect("good");
        assert_eq!(text, "kind: Namespace\nmetadata: {name: a}\n");
        assert_eq!(fingerprint, Fingerprint::stat(&path).expect("stat").0);
        assert_eq!(fingerprint.len, 36);
        let age = SystemTime::now().duration_since(fingerprint.changed_at()).expect("in the past");
        assert!(age < Duration::from_secs(60), "{age:?}");
    }

    /// libyaml counts a byte order mark as a column: the file's own is dropped, and one
    /// starting any other line is refused.
    #[test]
    fn byte_order_marks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "bom.yaml", "\u{feff}a: b\n".as_bytes());
        assert_eq!(both(&path).expect("a leading BOM").1, "a: b\n");
        let e = precheck("a: b\n\u{feff}*q: c\n", &Limits::CONTROL_PLANE).expect_err("a BOM on line 2");
        assert!(matches!(e, Problem::ByteOrderMark { line: 2 }), "{e:?}");
    }

    #[test]
    fn a_symlink_is_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = write(dir.path(), "real", b"a: b\n");
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let (fingerprint, _) = read(&link, &Limits::CONTROL_PLANE).expect("read");
        assert_eq!(fingerprint.inode, fs::metadata(&target).expect("stat").ino());
    }

    #[test]
    fn refuses_what_is_not_a_whole_utf8_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = write(dir.path(), "bad.yaml", b"a: b\nc: \xff\xfe\n");
        let e = both(&bad).expect_err("not utf-8");
        assert!(matches!(e, Problem::NotUtf8 { offset: 8, line: 2 }), "{e:?}");
        assert!(e.to_string().contains("offset 8"), "{e}");

        let cut = write(dir.path(), "cut.yaml", b"a: b\nc: d");
        let e = both(&cut).expect_err("no newline");
        assert!(matches!(e, Problem::NoFinalNewline));
        assert!(e.to_string().contains("mid-write"), "{e}");

        let e = both(dir.path()).expect_err("a directory");
        assert!(matches!(e, Problem::NotAFile), "{e:?}");
        let e = both(&dir.path().join("missing.yaml")).expect_err("missing");
        assert!(matches!(&e, Problem::Io { source } if source.kind() == io::ErrorKind::NotFound));
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo.yaml");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(status.success());
        assert!(matches!(read(&fifo, &Limits::CONTROL_PLANE), Err(Problem::NotAFile)));
    }

    #[test]
    fn empty_inputs_say_how_to_empty_a_source() {
        for text in ["", "\n\n", "# nothing\n", "---\n---\n...\n", "--- # c\n\n...\n"] {
            let e = precheck(text, &Limits::CONTROL_PLANE).expect_err(text);
            assert!(matches!(e, Problem::NoDocuments { .. }), "{text:?}: {e:?}");
            assert!(e.to_string().contains("delete the file"), "{e}");
        }
    }

    /// Each of these must be refused, and fast: no input may hold the thread.
    #[test]
    fn hostile_files_are_refused_quickly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut long_line = vec![b'a'; 1 << 20];
        long_line.push(b'\n');
        let deep = [b"a: ".as_slice(), &[b'['; 100_000], b"\n"].concat();
        let deep_lines = "[\n".repeat(100_000).into_bytes();
        let separators = "---\n".repeat(1_000_000).into_bytes();
        let cases: [(&str, &[u8]); 4] = [
            ("long.yaml", &long_line),
            ("deep.yaml", &deep),
            ("deep-lines.yaml", &deep_lines),
            ("separators.yaml", &separators),
        ];
        for (name, bytes) in cases {
            let path = write(dir.path(), name, bytes);
            let started = Instant::now();
            let e = both(&path).expect_err(name);
            let took = started.elapsed();
            assert!(took < Duration::from_millis(500), "{name}: {took:?}");
            match name {
                "long.yaml" => assert!(matches!(e, Problem::TooLong { line: 1, .. }), "{e:?}"),
                "separators.yaml" => assert!(matches!(e, Problem::TooManyDocuments { .. }), "{e:?}"),
                _ => assert!(matches!(e, Problem::TooDeep { .. }), "{name}: {e:?}"),
            }
        }

        // 50 MB (sparse): refused from its size, before a byte is read.
        let huge = dir.path().join("huge.yaml");
        fs::File::create(&huge).expect("create").set_len(50 << 20).expect("set_len");
        let started = Instant::now();
        let e = both(&huge).expect_err("huge");
        assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
        assert!(matches!(e, Problem::TooLarge { len, .. } if len == 50 << 20), "{e:?}");
    }
}
