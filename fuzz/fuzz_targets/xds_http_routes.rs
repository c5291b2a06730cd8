#![no_main]
//! See `nodemesh_agent::fuzzing::xds_http_routes`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh_agent::fuzzing::xds_http_routes(data));
