#![no_main]
//! See `nodemesh_controlplane::fuzzing::yaml_directory`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodemesh_controlplane::fuzzing::yaml_directory(data));
