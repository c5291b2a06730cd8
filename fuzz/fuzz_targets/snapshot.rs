#![no_main]
//! See `nodemesh_agent::fuzzing::snapshot_file`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh_agent::fuzzing::snapshot_file(data));
