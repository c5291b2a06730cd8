#![no_main]
//! See `nodemesh::fuzzing::snapshot_file`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh::fuzzing::snapshot_file(data));
