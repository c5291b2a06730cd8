//! Compiles the .proto files with protox (a protobuf compiler in Rust, so a fresh machine
//! needs no `protoc`) and generates prost messages and tonic services from the result.

const PROTOS: &[&str] = &[
    "envoy/service/discovery/v3/discovery.proto",
    "istio/workload/workload.proto",
    "istio/security/authorization.proto",
    "istio/ca/ca.proto",
    "nodemesh/v1/http_route.proto",
    "nodemesh/v1/service_policy.proto",
    "nodemesh/v1/snapshot.proto",
    "nodemesh/v1/workload.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    // BTreeMap for map fields: encoding is then deterministic, so a resource's version (a hash
    // of its encoding) changes only when its content does.
    tonic_prost_build::configure().btree_map(".").build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
