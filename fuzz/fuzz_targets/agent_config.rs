#![no_main]
//! See `nodemesh::fuzzing::agent_config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh::fuzzing::agent_config(data));
