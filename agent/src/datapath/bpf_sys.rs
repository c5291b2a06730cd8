//! Concurrent map access for the proxy's hot path.
//!
//! aya's typed maps need `&mut` for writes, which would put a lock around every connection's
//! map operations. The kernel already serialises map operations, so the proxy shares plain
//! map file descriptors and issues the `bpf(2)` commands itself. This is the only place with
//! `unsafe` for that; keys and values are `aya::Pod`, so any bit pattern is valid.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// The `map_elem` member of `union bpf_attr`. The kernel accepts a shorter attr and zero-fills
/// the rest.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A map shared by tasks; every operation is one syscall.
#[derive(Debug)]
pub struct MapFd {
    fd: OwnedFd,
}

impl MapFd {
    pub fn new(fd: BorrowedFd<'_>) -> io::Result<Self> {
        Ok(Self { fd: fd.try_clone_to_owned()? })
    }

    pub fn lookup<K: Pod, V: Pod>(&self, key: &K) -> io::Result<Option<V>> {
        let mut value = MaybeUninit::<V>::zeroed();
        match self.call(BPF_MAP_LOOKUP_ELEM, key, value.as_mut_ptr() as u64, 0) {
            // SAFETY: the kernel filled size_of::<V>() bytes and V is Pod.
            Ok(()) => Ok(Some(unsafe { value.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Looks a key up and removes it in one step (the proxy consumes original destinations).
    pub fn take<K: Pod, V: Pod>(&self, key: &K) -> io::Result<Option<V>> {
        let mut value = MaybeUninit::<V>::zeroed();
        match self.call(BPF_MAP_LOOKUP_AND_DELETE_ELEM, key, value.as_mut_ptr() as u64, 0) {
            // SAFETY: as in lookup.
            Ok(()) => Ok(Some(unsafe { value.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn update<K: Pod, V: Pod>(&self, key: &K, value: &V) -> io::Result<()> {
        self.call(BPF_MAP_UPDATE_ELEM, key, std::ptr::from_ref(value) as u64, 0)
    }

    /// Puts a socket into a SOCKHASH/SOCKMAP (the value is its file descriptor).
    pub fn insert_socket<K: Pod>(&self, key: &K, socket: BorrowedFd<'_>) -> io::Result<()> {
        let fd = socket.as_raw_fd() as u32;
        self.update(key, &fd)
    }

    /// Removes a key; a missing key is not an error.
    pub fn delete<K: Pod>(&self, key: &K) -> io::Result<()> {
        match self.call(BPF_MAP_DELETE_ELEM, key, 0, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// The key after `key` (the first key with `None`), or `None` at the end.
    pub fn next_key<K: Pod>(&self, key: Option<&K>) -> io::Result<Option<K>> {
        let mut next = MaybeUninit::<K>::zeroed();
        let result = match key {
            Some(key) => self.call(BPF_MAP_GET_NEXT_KEY, key, next.as_mut_ptr() as u64, 0),
            // A null key asks for the first one.
            None => self.call_raw(BPF_MAP_GET_NEXT_KEY, 0, next.as_mut_ptr() as u64, 0),
        };
        match result {
            // SAFETY: the kernel filled size_of::<K>() bytes and K is Pod.
            Ok(()) => Ok(Some(unsafe { next.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Walks every key, calling `f` with each, up to `limit` keys (a map another writer keeps
    /// changing can make a walk restart; the limit keeps it finite).
    pub fn for_each_key<K: Pod>(&self, limit: usize, mut f: impl FnMut(&K)) -> io::Result<usize> {
        let mut key: Option<K> = None;
        let mut seen = 0;
        while seen < limit {
            match self.next_key(key.as_ref())? {
                Some(next) => {
                    f(&next);
                    key = Some(next);
                    seen += 1;
                }
                None => break,
            }
        }
        Ok(seen)
    }

    fn call<K: Pod>(&self, cmd: libc::c_long, key: &K, value: u64, flags: u64) -> io::Result<()> {
        self.call_raw(cmd, std::ptr::from_ref(key) as u64, value, flags)
    }

    fn call_raw(&self, cmd: libc::c_long, key: u64, value: u64, flags: u64) -> io::Result<()> {
        let attr =
            MapElemAttr { map_fd: self.fd.as_raw_fd() as u32, key, value, flags, ..Default::default() };
        // SAFETY: `attr` points at valid memory of the stated size; key and value pointers
        // are live for the call and sized by their types, which match the map's definition
        // (checked when the maps were loaded, see loader.rs).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                std::ptr::from_ref(&attr),
                size_of::<MapElemAttr>() as libc::c_uint,
            )
        };
        if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}
