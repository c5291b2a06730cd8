#![no_main]
//! See `nodemesh_agent::fuzzing::agent_config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh_agent::fuzzing::agent_config(data));
