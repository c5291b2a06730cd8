#![no_main]
//! See `nodemesh_agent::fuzzing::flows_query`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh_agent::fuzzing::flows_query(data));
