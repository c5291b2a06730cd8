#![no_main]
//! See `nodemesh::fuzzing::flows_query`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh::fuzzing::flows_query(data));
