#![no_main]
//! See `nodemesh::fuzzing::xds_response`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh::fuzzing::xds_response(data));
