#![no_main]
//! See `nodemesh_agent::fuzzing::xds_response`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh_agent::fuzzing::xds_response(data));
