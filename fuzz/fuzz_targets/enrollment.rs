#![no_main]
//! See `nodemesh::fuzzing::enrollment`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh::fuzzing::enrollment(data));
