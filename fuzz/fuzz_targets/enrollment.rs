#![no_main]
//! See `nodemesh_agent::fuzzing::enrollment`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh_agent::fuzzing::enrollment(data));
