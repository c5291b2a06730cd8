//! The one place xDS resources become domain types (`resources.rs`, `authz::policy`). Every
//! proto field is destructured, so a new one cannot be ignored silently; every field the
//! agent relies on is checked; an error names the resource and the field, and becomes the
//! NACK's reason.

use std::net::IpAddr;

mod extensions;
mod http_routes;
mod services;

pub use http_routes::http_routes;
pub use services::service_policy;

pub use super::resources::{Address, PortMap, Service, Workload};
use crate::authz::{Action, Authorization, Cidr, MatchSpec, Scope, StrMatch};
use crate::services::http::AppProtocol;
use nodemesh_conventions::{FieldError, LABELS_EXTENSION, Labels, POD_UID_EXTENSION};
use nodemesh_proto::{
    envoy::service::discovery::v3::Resource,
    istio::{security as sec, workload as wl},
    prost::Message as _,
    type_urls,
};

#[cfg(test)]
pub(super) use extensions::tests::labels_extension;

/// A resource refused: which, and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource {resource:?}: {error}")]
pub struct Invalid {
    pub resource: String,
    pub error: FieldError,
}

struct Ctx<'a> {
    resource: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> Invalid {
        self.invalid(FieldError::new(field, message))
    }

    fn invalid(&self, error: FieldError) -> Invalid {
        Invalid { resource: self.resource.to_owned(), error }
    }

    fn ip(&self, field: String, bytes: &[u8]) -> Result<IpAddr, Invalid> {
        match bytes.len() {
            4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).map_err(|_| self.err(&field, "bad length"))?)),
            16 => Ok(IpAddr::from(<[u8; 16]>::try_from(bytes).map_err(|_| self.err(&field, "bad length"))?)),
            n => Err(self.err(field, format!("{n} bytes is not an IPv4 or IPv6 address"))),
        }
    }

    fn port(&self, field: String, value: u32, allow_zero: bool) -> Result<u16, Invalid> {
        match u16::try_from(value) {
            Ok(0) if !allow_zero => Err(self.err(field, "port 0")),
            Ok(p) => Ok(p),
            Err(_) => Err(self.err(field, format!("{value} is not a port"))),
        }
    }

    fn nonempty(&self, field: &str, value: &str) -> Result<String, Invalid> {
        if value.is_empty() {
            return Err(self.err(field, "required"));
        }
        self.bounded(field, value)
    }

    /// Names and strings peers send are bounded: far above anything real (Kubernetes names
    /// stop at 253 bytes), low enough that no resource can make the agent hold much.
    fn bounded(&self, field: &str, value: &str) -> Result<String, Invalid> {
        if value.len() > MAX_STRING {
            return Err(self.err(field, format!("{} bytes, more than {MAX_STRING}", value.len())));
        }
        Ok(value.to_owned())
    }

    /// The body of one resource, bounded before it is decoded.
    fn body<'r>(&self, resource: &'r Resource, type_url: &str) -> Result<&'r [u8], Invalid> {
        let any = resource.resource.as_ref().ok_or_else(|| self.err("resource", "missing"))?;
        if any.type_url != type_url {
            return Err(self.err("resource.type_url", format!("{:?} is not {type_url}", any.type_url)));
        }
        if any.value.len() > MAX_RESOURCE_BYTES {
            return Err(self.err(
                "resource.value",
                format!("{} bytes, more than {MAX_RESOURCE_BYTES}", any.value.len()),
            ));
        }
        Ok(&any.value)
    }
}

/// The longest string a resource may carry in any field.
const MAX_STRING: usize = 1024;
/// The largest resource body: Istio's Address and Authorization resources are a few KB.
const MAX_RESOURCE_BYTES: usize = 256 << 10;

/// Decodes and checks one Address resource.
pub fn address(resource: &Resource) -> Result<Address, Invalid> {
    let ctx = Ctx { resource: &resource.name };
    if resource.name.len() > MAX_STRING {
        return Err(ctx.err("name", format!("{} bytes, more than {MAX_STRING}", resource.name.len())));
    }
    let body = ctx.body(resource, type_urls::ADDRESS)?;
    let address = wl::Address::decode(body).map_err(|e| ctx.err("resource.value", e.to_string()))?;
    match address.r#type {
        Some(wl::address::Type::Workload(w)) => workload(&ctx, w).map(Address::Workload),
        Some(wl::address::Type::Service(s)) => service(&ctx, s).map(Address::Service),
        None => Err(ctx.err("type", "neither a workload nor a service")),
    }
}

fn ports(ctx: &Ctx<'_>, field: &str, list: &[wl::Port]) -> Result<Vec<PortMap>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, wl::Port { service_port, target_port, app_protocol })| {
            // Istio's reading of the port (appProtocol, else the name's prefix), done by the
            // control plane: which ports the HTTP stage takes. Anything else is opaque TCP.
            let protocol = match wl::AppProtocol::try_from(*app_protocol) {
                Ok(wl::AppProtocol::Http11) => AppProtocol::Http1,
                Ok(wl::AppProtocol::Http2) => AppProtocol::Http2,
                Ok(wl::AppProtocol::Grpc) => AppProtocol::Grpc,
                Ok(_) => AppProtocol::Tcp,
                Err(_) => {
                    return Err(ctx
                        .err(format!("{field}[{i}].app_protocol"), format!("unknown value {app_protocol}")));
                }
            };
            Ok(PortMap {
                service_port: ctx.port(format!("{field}[{i}].service_port"), *service_port, false)?,
                target_port: ctx.port(format!("{field}[{i}].target_port"), *target_port, true)?,
                protocol,
            })
        })
        .collect()
}

fn workload(ctx: &Ctx<'_>, w: wl::Workload) -> Result<Workload, Invalid> {
    // Every field named: a field added to the proto does not compile until it is handled
    // here, or listed as ignored with the reason.
    let wl::Workload {
        uid,
        name,
        namespace,
        addresses,
        tunnel_protocol,
        trust_domain,
        service_account,
        node,
        canonical_name,
        canonical_revision,
        workload_name,
        services: service_ports,
        authorization_policies,
        status,
        extensions: workload_extensions,
        locality,
        // Ignored until the features that use them land: a workload's own name in DNS,
        // network and gateway (multi-network), waypoints (L7 in ambient), workload type,
        // tunnels the app speaks itself, cluster, host network (such pods are never
        // enrolled), capacity (weighted balancing).
        hostname: _,
        network: _,
        waypoint: _,
        network_gateway: _,
        workload_type: _,
        native_tunnel: _,
        application_tunnel: _,
        cluster_id: _,
        network_mode: _,
        capacity: _,
    } = w;
    let uid = ctx.nonempty("workload.uid", &uid)?;
    let ips = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let field = format!("workload.addresses[{i}]");
            let ip = ctx.ip(field.clone(), a)?;
            match crate::claims::not_a_pod_address(ip) {
                Some(why) => Err(ctx.err(field, why)),
                None => Ok(ip),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tunnel = wl::TunnelProtocol::try_from(tunnel_protocol)
        .map_err(|_| ctx.err("workload.tunnel_protocol", format!("unknown value {tunnel_protocol}")))?;
    let (mut pod_uid, mut labels) = (None, Labels::new());
    for (i, ext) in workload_extensions.iter().enumerate() {
        let field = || format!("workload.extensions[{i}].config");
        match ext.name.as_str() {
            POD_UID_EXTENSION => pod_uid = Some(extensions::pod_uid(ctx, &field(), ext)?),
            LABELS_EXTENSION => labels = extensions::labels(ctx, &field(), ext)?,
            _ => {}
        }
    }
    let mut services = Vec::with_capacity(service_ports.len());
    for (key, list) in &service_ports {
        services.push((key.clone(), ports(ctx, &format!("workload.services[{key:?}].ports"), &list.ports)?));
    }
    Ok(Workload {
        pod_uid,
        name: ctx.nonempty("workload.name", &name)?,
        namespace: ctx.nonempty("workload.namespace", &namespace)?,
        ips,
        node: ctx.bounded("workload.node", &node)?,
        captured: tunnel == wl::TunnelProtocol::Hbone,
        trust_domain: ctx.bounded("workload.trust_domain", &trust_domain)?,
        service_account: ctx.bounded("workload.service_account", &service_account)?,
        canonical_name: unless_default(canonical_name, or_default(&workload_name, &name)),
        workload_name: unless_default(workload_name, &name),
        canonical_revision: unless_default(canonical_revision, "latest"),
        services,
        authorization_policies,
        healthy: status != wl::WorkloadStatus::Unhealthy as i32,
        labels,
        locality: services::locality(ctx, locality)?,
        uid,
    })
}

/// `value`, or nothing when it is what an empty value means anyway.
fn unless_default(value: String, default: &str) -> String {
    if value == default { String::new() } else { value }
}

fn or_default<'s>(value: &'s str, default: &'s str) -> &'s str {
    if value.is_empty() { default } else { value }
}

fn service(ctx: &Ctx<'_>, s: wl::Service) -> Result<Service, Invalid> {
    // Every field named, as in `workload`.
    let wl::Service {
        name,
        namespace,
        hostname,
        addresses,
        ports: service_ports,
        load_balancing,
        // Ignored: SANs (an endpoint's own identity is what HBONE checks), waypoints (L7 in
        // ambient), IP families (the addresses say), extensions (none defined for
        // services), canonical, waypoint use and visibility (multi-cluster and ambient
        // gateways).
        subject_alt_names: _,
        waypoint: _,
        ip_families: _,
        extensions: _,
        canonical: _,
        ingress_use_waypoint: _,
        weighted_waypoints: _,
        visibility: _,
    } = s;
    let vips = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let field = format!("service.addresses[{i}].address");
            let ip = ctx.ip(field.clone(), &a.address)?;
            match crate::claims::not_a_pod_address(ip) {
                Some(why) => Err(ctx.err(field, why)),
                None => Ok(ip),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Service {
        name: ctx.nonempty("service.name", &name)?,
        namespace: ctx.nonempty("service.namespace", &namespace)?,
        hostname: ctx.nonempty("service.hostname", &hostname)?,
        vips,
        ports: ports(ctx, "service.ports", &service_ports)?,
        load_balancing: services::load_balancing(ctx, load_balancing)?,
    })
}

/// Decodes and checks one Authorization resource.
pub fn authorization(resource: &Resource) -> Result<Authorization, Invalid> {
    let ctx = Ctx { resource: &resource.name };
    if resource.name.len() > MAX_STRING {
        return Err(ctx.err("name", format!("{} bytes, more than {MAX_STRING}", resource.name.len())));
    }
    let body = ctx.body(resource, type_urls::AUTHORIZATION)?;
    // Every field named: a field added to the proto does not compile until it is handled.
    let sec::Authorization { name, namespace, scope, action, rules, dry_run, extensions } =
        sec::Authorization::decode(body).map_err(|e| ctx.err("resource.value", e.to_string()))?;
    // No extension is defined for policies; any is ignored.
    let _ = extensions;
    let scope = match sec::Scope::try_from(scope) {
        Ok(sec::Scope::Global) => Scope::Global,
        Ok(sec::Scope::Namespace) => Scope::Namespace,
        Ok(sec::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => return Err(ctx.err("scope", format!("unknown value {scope}"))),
    };
    let action = match sec::Action::try_from(action) {
        Ok(sec::Action::Allow) => Action::Allow,
        Ok(sec::Action::Deny) => Action::Deny,
        Err(_) => return Err(ctx.err("action", format!("unknown value {action}"))),
    };
    let mut checked = Vec::with_capacity(rules.len());
    for (r, sec::Rule { clauses }) in rules.iter().enumerate() {
        let mut checked_clauses = Vec::with_capacity(clauses.len());
        for (c, sec::Clause { matches }) in clauses.iter().enumerate() {
            let mut checked_matches = Vec::with_capacity(matches.len());
            for (m, mat) in matches.iter().enumerate() {
                checked_matches.push(match_spec(
                    &ctx,
                    &format!("rules[{r}].clauses[{c}].matches[{m}]"),
                    mat,
                )?);
            }
            checked_clauses.push(checked_matches);
        }
        checked.push(checked_clauses);
    }
    Ok(Authorization {
        name: ctx.nonempty("name", &name)?,
        namespace,
        scope,
        action,
        rules: checked,
        dry_run,
    })
}

fn match_spec(ctx: &Ctx<'_>, at: &str, m: &sec::Match) -> Result<MatchSpec, Invalid> {
    let strs = |name: &str, list: &[sec::StringMatch]| -> Result<Vec<StrMatch>, Invalid> {
        list.iter()
            .enumerate()
            .map(|(i, s)| {
                use sec::string_match::MatchType;
                match &s.match_type {
                    Some(MatchType::Exact(v)) => {
                        Ok(StrMatch::Exact(ctx.bounded(&format!("{at}.{name}[{i}]"), v)?))
                    }
                    Some(MatchType::Prefix(v)) => {
                        Ok(StrMatch::Prefix(ctx.bounded(&format!("{at}.{name}[{i}]"), v)?))
                    }
                    Some(MatchType::Suffix(v)) => {
                        Ok(StrMatch::Suffix(ctx.bounded(&format!("{at}.{name}[{i}]"), v)?))
                    }
                    Some(MatchType::Presence(())) => Ok(StrMatch::Present),
                    None => Err(ctx.err(format!("{at}.{name}[{i}]"), "empty string match")),
                }
            })
            .collect()
    };
    let cidrs = |name: &str, list: &[sec::Address]| -> Result<Vec<Cidr>, Invalid> {
        list.iter()
            .enumerate()
            .map(|(i, a)| {
                let ip = ctx.ip(format!("{at}.{name}[{i}].address"), &a.address)?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len = u8::try_from(a.length).ok().filter(|l| *l <= max).ok_or_else(|| {
                    ctx.err(format!("{at}.{name}[{i}].length"), format!("{} is too long", a.length))
                })?;
                Ok(Cidr { ip, len })
            })
            .collect()
    };
    let port_list = |name: &str, list: &[u32]| -> Result<Vec<u16>, Invalid> {
        list.iter().enumerate().map(|(i, p)| ctx.port(format!("{at}.{name}[{i}]"), *p, false)).collect()
    };
    let sas = |list: &[sec::ServiceAccountMatch]| {
        list.iter()
            .map(|sec::ServiceAccountMatch { namespace, service_account }| {
                (namespace.clone(), service_account.clone())
            })
            .collect()
    };
    // Every field named, as in `authorization`.
    let sec::Match {
        namespaces,
        not_namespaces,
        principals,
        not_principals,
        source_ips,
        not_source_ips,
        destination_ips,
        not_destination_ips,
        destination_ports,
        not_destination_ports,
        service_accounts,
        not_service_accounts,
        extensions: _,
    } = m;
    Ok(MatchSpec {
        namespaces: strs("namespaces", namespaces)?,
        not_namespaces: strs("not_namespaces", not_namespaces)?,
        principals: strs("principals", principals)?,
        not_principals: strs("not_principals", not_principals)?,
        source_ips: cidrs("source_ips", source_ips)?,
        not_source_ips: cidrs("not_source_ips", not_source_ips)?,
        destination_ips: cidrs("destination_ips", destination_ips)?,
        not_destination_ips: cidrs("not_destination_ips", not_destination_ips)?,
        destination_ports: port_list("destination_ports", destination_ports)?,
        not_destination_ports: port_list("not_destination_ports", not_destination_ports)?,
        service_accounts: sas(service_accounts),
        not_service_accounts: sas(not_service_accounts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodemesh_proto::prost_types::Any;

    pub(super) fn resource(name: &str, w: wl::Workload) -> Resource {
        Resource {
            name: name.into(),
            resource: Some(Any {
                type_url: type_urls::ADDRESS.into(),
                value: wl::Address { r#type: Some(wl::address::Type::Workload(w)) }.encode_to_vec(),
            }),
            ..Default::default()
        }
    }

    pub(super) fn good() -> wl::Workload {
        wl::Workload {
            uid: "Kubernetes//Pod/shop/cart".into(),
            name: "cart-7d9f8c6b5-x2x4z".into(),
            workload_name: "cart".into(),
            canonical_name: "shop-cart".into(),
            canonical_revision: "v2".into(),
            namespace: "shop".into(),
            addresses: vec![vec![10, 0, 0, 5]],
            tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
            node: "n1".into(),
            extensions: vec![wl::Extension {
                name: POD_UID_EXTENSION.into(),
                config: Some(Any {
                    type_url: type_urls::STRING_VALUE.into(),
                    value: "ab-12".to_owned().encode_to_vec(),
                }),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn reads_a_workload() {
        let Address::Workload(w) = address(&resource("w", good())).expect("valid") else {
            panic!("workload")
        };
        assert!(w.captured);
        assert_eq!(w.pod_uid.as_deref(), Some("ab-12"));
        assert_eq!(w.ips, vec!["10.0.0.5".parse::<IpAddr>().expect("ip")]);
        assert_eq!((w.name.as_str(), w.workload_name.as_str()), ("cart-7d9f8c6b5-x2x4z", "cart"));
        assert_eq!((w.canonical_name.as_str(), w.canonical_revision.as_str()), ("shop-cart", "v2"));
        // Defaults are held as nothing: the pod is its workload, the workload its canonical
        // service, at `latest`.
        let mut plain = good();
        (plain.workload_name, plain.canonical_name, plain.canonical_revision) =
            (plain.name.clone(), plain.name.clone(), "latest".into());
        let Address::Workload(w) = address(&resource("w", plain)).expect("valid") else { panic!("workload") };
        assert_eq!([w.workload_name, w.canonical_name, w.canonical_revision], ["", "", ""]);
    }

    #[test]
    fn errors_name_the_resource_and_field() {
        let mut w = good();
        w.addresses.push(vec![1, 2, 3]);
        let e = address(&resource("bad", w)).expect_err("5-byte address");
        assert_eq!((e.resource.as_str(), e.error.field.as_str()), ("bad", "workload.addresses[1]"));
        assert_eq!(
            e.to_string(),
            "resource \"bad\": workload.addresses[1]: 3 bytes is not an IPv4 or IPv6 address"
        );

        let mut w = good();
        w.uid.clear();
        assert_eq!(address(&resource("x", w)).expect_err("uid").error.field, "workload.uid");
    }
}
