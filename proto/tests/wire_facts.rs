//! Wire compatibility: every message, field number, type and repetition, and every enum
//! value, in the interop facts must be exactly what our .proto files declare, so istiod can
//! drive an agent and a ztunnel node can talk to one.

use std::collections::BTreeMap;

use prost_types::{
    DescriptorProto, EnumDescriptorProto, field_descriptor_proto::Label, field_descriptor_proto::Type,
};
use serde_json::Value;

const PROTOS: &[&str] = &[
    "envoy/service/discovery/v3/discovery.proto",
    "istio/workload/workload.proto",
    "istio/security/authorization.proto",
    "istio/ca/ca.proto",
];

#[derive(Debug, PartialEq)]
struct Field {
    number: i64,
    /// Fully qualified for messages and enums, scalar names otherwise, `map<K,V>` for maps.
    ty: String,
    repeated: bool,
}

enum Decl {
    Message(BTreeMap<String, Field>),
    Enum(BTreeMap<String, i64>),
}

fn scalar(t: Type) -> &'static str {
    match t {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
        Type::Group | Type::Message | Type::Enum => "",
    }
}

/// Collects our declarations by full name.
fn ours() -> BTreeMap<String, Decl> {
    let fds = protox::compile(PROTOS, [env!("CARGO_MANIFEST_DIR")]).expect("our protos compile");
    let mut out = BTreeMap::new();
    let mut map_entries = BTreeMap::new();
    for file in &fds.file {
        let pkg = file.package();
        for m in &file.message_type {
            collect_maps(pkg, m, &mut map_entries);
        }
    }
    for file in &fds.file {
        let pkg = file.package();
        for m in &file.message_type {
            collect_message(pkg, m, &map_entries, &mut out);
        }
        for e in &file.enum_type {
            collect_enum(pkg, e, &mut out);
        }
    }
    out
}

fn collect_maps(prefix: &str, m: &DescriptorProto, maps: &mut BTreeMap<String, (String, String)>) {
    let name = format!("{prefix}.{}", m.name());
    if m.options.as_ref().is_some_and(|o| o.map_entry()) {
        let ty = |f: &prost_types::FieldDescriptorProto| match f.r#type() {
            Type::Message | Type::Enum => f.type_name().trim_start_matches('.').to_owned(),
            t => scalar(t).to_owned(),
        };
        maps.insert(name.clone(), (ty(&m.field[0]), ty(&m.field[1])));
    }
    for nested in &m.nested_type {
        collect_maps(&name, nested, maps);
    }
}

fn collect_message(
    prefix: &str,
    m: &DescriptorProto,
    maps: &BTreeMap<String, (String, String)>,
    out: &mut BTreeMap<String, Decl>,
) {
    let name = format!("{prefix}.{}", m.name());
    if m.options.as_ref().is_some_and(|o| o.map_entry()) {
        return;
    }
    let mut fields = BTreeMap::new();
    for f in &m.field {
        let type_name = f.type_name().trim_start_matches('.').to_owned();
        let (ty, repeated) = match (f.r#type(), maps.get(&type_name)) {
            (Type::Message, Some((k, v))) => (format!("map<{k},{v}>"), false),
            (Type::Message | Type::Enum, _) => (type_name, f.label() == Label::Repeated),
            (t, _) => (scalar(t).to_owned(), f.label() == Label::Repeated),
        };
        fields.insert(f.name().to_owned(), Field { number: i64::from(f.number()), ty, repeated });
    }
    out.insert(name.clone(), Decl::Message(fields));
    for nested in &m.nested_type {
        collect_message(&name, nested, maps, out);
    }
    for e in &m.enum_type {
        collect_enum(&name, e, out);
    }
}

fn collect_enum(prefix: &str, e: &EnumDescriptorProto, out: &mut BTreeMap<String, Decl>) {
    let values = e.value.iter().map(|v| (v.name().to_owned(), i64::from(v.number()))).collect();
    out.insert(format!("{prefix}.{}", e.name()), Decl::Enum(values));
}

/// Whether our fully qualified type is the type the facts name (relative names resolve to a
/// suffix, as in protobuf scoping).
fn same_type(ours: &str, theirs: &str) -> bool {
    if let (Some(o), Some(t)) = (ours.strip_prefix("map<"), theirs.strip_prefix("map<")) {
        let (ok, ov) = o.trim_end_matches('>').split_once(',').unwrap_or_default();
        let (tk, tv) = t.trim_end_matches('>').split_once(',').unwrap_or_default();
        return ok == tk && same_type(ov, tv);
    }
    ours == theirs || ours.ends_with(&format!(".{theirs}"))
}

/// The interop facts: `../shared/interop/istio-wire-facts.json` beside the repository when it is
/// there (the source of truth), else the copy in `testdata/` (a fresh clone alone).
fn facts() -> BTreeMap<String, Value> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../../shared/interop/istio-wire-facts.json");
    let text = match std::fs::read_to_string(&shared) {
        Ok(text) => {
            eprintln!("checking against {}", shared.display());
            text
        }
        Err(_) => include_str!("../testdata/istio-wire-facts.json").to_owned(),
    };
    serde_json::from_str(&text).expect("facts json")
}

#[test]
fn our_protos_match_the_interop_facts() {
    let facts = facts();
    let ours = ours();
    let mut problems = Vec::new();
    for (name, fact) in &facts {
        let theirs = fact["fields"].as_object().expect("fields");
        match (fact["kind"].as_str(), ours.get(name)) {
            (Some("message"), Some(Decl::Message(fields))) => {
                for (field, t) in theirs {
                    match fields.get(field) {
                        None => problems.push(format!("{name}.{field}: missing")),
                        Some(f) => {
                            let number = t["number"].as_i64().expect("number");
                            let ty = t["type"].as_str().expect("type");
                            let repeated = t["repeated"].as_bool().expect("repeated");
                            if f.number != number || !same_type(&f.ty, ty) || f.repeated != repeated {
                                problems.push(format!(
                                    "{name}.{field}: ours {f:?}, theirs number {number} type {ty} repeated {repeated}"
                                ));
                            }
                        }
                    }
                }
                for field in fields.keys().filter(|f| !theirs.contains_key(*f)) {
                    problems.push(format!("{name}.{field}: not in the facts"));
                }
            }
            (Some("enum"), Some(Decl::Enum(values))) => {
                for (value, t) in theirs {
                    let number = t["number"].as_i64().expect("number");
                    if values.get(value) != Some(&number) {
                        problems
                            .push(format!("{name}.{value}: ours {:?}, theirs {number}", values.get(value)));
                    }
                }
                for value in values.keys().filter(|v| !theirs.contains_key(*v)) {
                    problems.push(format!("{name}.{value}: not in the facts"));
                }
            }
            (kind, _) => problems.push(format!("{name}: {} missing or of another kind", kind.unwrap_or("?"))),
        }
    }
    assert!(problems.is_empty(), "wire mismatches:\n{}", problems.join("\n"));
    assert!(facts.len() > 40, "the facts file looks truncated");
}
