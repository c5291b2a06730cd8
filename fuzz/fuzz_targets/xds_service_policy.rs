#![no_main]
//! See `nodemesh_agent::fuzzing::xds_service_policy`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh_agent::fuzzing::xds_service_policy(data));
