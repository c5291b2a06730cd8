//! What the routing stage reads from the control plane: a service's `LoadBalancing`, a
//! workload's locality, and Nodemesh's `ServicePolicy` resource.

use std::time::Duration;

use nodemesh_proto::{
    envoy::service::discovery::v3::Resource, istio::workload as wl, nodemesh::v1 as nm, prost::Message as _,
    type_urls,
};

use super::{Ctx, Invalid, MAX_STRING};
use crate::services::{
    Algorithm, LoadBalancing, Locality, LocalityMode, OutlierDetection, RateLimit, ScaleFromZero, Scope,
    ServicePolicy,
};

pub(super) fn load_balancing(ctx: &Ctx<'_>, lb: Option<wl::LoadBalancing>) -> Result<LoadBalancing, Invalid> {
    let Some(wl::LoadBalancing { routing_preference, mode, health_policy }) = lb else {
        return Ok(LoadBalancing::default());
    };
    let field = "service.load_balancing";
    let routing_preference = routing_preference
        .iter()
        .enumerate()
        .map(|(i, s)| match wl::load_balancing::Scope::try_from(*s) {
            Ok(wl::load_balancing::Scope::Region) => Ok(Scope::Region),
            Ok(wl::load_balancing::Scope::Zone) => Ok(Scope::Zone),
            Ok(wl::load_balancing::Scope::Subzone) => Ok(Scope::Subzone),
            Ok(wl::load_balancing::Scope::Node) => Ok(Scope::Node),
            Ok(wl::load_balancing::Scope::Cluster) => Ok(Scope::Cluster),
            Ok(wl::load_balancing::Scope::Network) => Ok(Scope::Network),
            Ok(wl::load_balancing::Scope::UnspecifiedScope) | Err(_) => {
                Err(ctx.err(format!("{field}.routing_preference[{i}]"), format!("unknown scope {s}")))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mode = match wl::load_balancing::Mode::try_from(mode) {
        // Unspecified with a preference is ztunnel's failover.
        Ok(wl::load_balancing::Mode::UnspecifiedMode | wl::load_balancing::Mode::Failover) => {
            LocalityMode::Failover
        }
        Ok(wl::load_balancing::Mode::Strict) => LocalityMode::Strict,
        Ok(wl::load_balancing::Mode::Passthrough) => LocalityMode::Passthrough,
        Err(_) => return Err(ctx.err(format!("{field}.mode"), format!("unknown value {mode}"))),
    };
    let allow_unhealthy = match wl::load_balancing::HealthPolicy::try_from(health_policy) {
        Ok(wl::load_balancing::HealthPolicy::OnlyHealthy) => false,
        Ok(wl::load_balancing::HealthPolicy::AllowAll) => true,
        Err(_) => {
            return Err(ctx.err(format!("{field}.health_policy"), format!("unknown value {health_policy}")));
        }
    };
    Ok(LoadBalancing { routing_preference, mode, allow_unhealthy })
}

pub(super) fn locality(
    ctx: &Ctx<'_>,
    locality: Option<wl::Locality>,
) -> Result<Option<Box<Locality>>, Invalid> {
    let Some(wl::Locality { region, zone, subzone }) = locality else { return Ok(None) };
    let locality = Locality {
        region: ctx.bounded("workload.locality.region", &region)?,
        zone: ctx.bounded("workload.locality.zone", &zone)?,
        subzone: ctx.bounded("workload.locality.subzone", &subzone)?,
    };
    Ok((!locality.is_empty()).then(|| Box::new(locality)))
}

/// The most rate limits one service may carry: far above any real policy, bounded so that
/// no resource makes a connection's check long.
const MAX_RATE_LIMITS: usize = 64;

/// Decodes and checks one ServicePolicy resource; returns the service's `namespace/hostname`
/// with it.
pub fn service_policy(resource: &Resource) -> Result<(String, ServicePolicy), Invalid> {
    let ctx = Ctx { resource: &resource.name };
    if resource.name.len() > MAX_STRING {
        return Err(ctx.err("name", format!("{} bytes, more than {MAX_STRING}", resource.name.len())));
    }
    let body = ctx.body(resource, type_urls::SERVICE_POLICY)?;
    // Every field named: a field added to the proto does not compile until it is handled.
    let nm::ServicePolicy {
        namespace,
        hostname,
        algorithm,
        connect_timeout_ms,
        max_connections,
        outlier_detection,
        rate_limits,
        fallback,
        scale_from_zero,
    } = nm::ServicePolicy::decode(body).map_err(|e| ctx.err("resource.value", e.to_string()))?;
    let service =
        format!("{}/{}", ctx.nonempty("namespace", &namespace)?, ctx.nonempty("hostname", &hostname)?);
    if resource.name != service {
        return Err(ctx.err("hostname", format!("{service:?} is not the service the resource is named for")));
    }
    let algorithm = match nm::service_policy::Algorithm::try_from(algorithm) {
        Ok(nm::service_policy::Algorithm::P2cEwma) => Algorithm::P2cEwma,
        Ok(nm::service_policy::Algorithm::RoundRobin) => Algorithm::RoundRobin,
        Ok(nm::service_policy::Algorithm::Random) => Algorithm::Random,
        Err(_) => return Err(ctx.err("algorithm", format!("unknown value {algorithm}"))),
    };
    let outlier_detection = outlier_detection
        .map(|o| {
            let nm::OutlierDetection {
                consecutive_errors,
                interval_ms,
                base_ejection_time_ms,
                max_ejection_percent,
            } = o;
            if consecutive_errors == 0 {
                return Err(ctx.err("outlier_detection.consecutive_errors", "must be at least 1"));
            }
            if max_ejection_percent > 100 {
                return Err(ctx.err(
                    "outlier_detection.max_ejection_percent",
                    format!("{max_ejection_percent} is more than 100"),
                ));
            }
            Ok(OutlierDetection {
                consecutive_errors,
                interval: positive(&ctx, "outlier_detection.interval_ms", interval_ms)?,
                base_ejection_time: positive(
                    &ctx,
                    "outlier_detection.base_ejection_time_ms",
                    base_ejection_time_ms,
                )?,
                max_ejection_percent,
            })
        })
        .transpose()?;
    if rate_limits.len() > MAX_RATE_LIMITS {
        return Err(
            ctx.err("rate_limits", format!("{} limits, more than {MAX_RATE_LIMITS}", rate_limits.len()))
        );
    }
    let rate_limits = rate_limits
        .into_iter()
        .enumerate()
        .map(|(i, nm::RateLimit { principals, connections_per_second, burst, max_concurrent })| {
            if connections_per_second == 0 && max_concurrent == 0 {
                return Err(ctx.err(format!("rate_limits[{i}]"), "limits nothing"));
            }
            let principals = principals
                .iter()
                .enumerate()
                .map(|(j, p)| ctx.nonempty(&format!("rate_limits[{i}].principals[{j}]"), p))
                .collect::<Result<_, _>>()?;
            Ok(RateLimit {
                principals,
                connections_per_second,
                burst: if burst == 0 { connections_per_second } else { burst },
                max_concurrent,
            })
        })
        .collect::<Result<_, _>>()?;
    let fallback = (!fallback.is_empty()).then(|| ctx.bounded("fallback", &fallback)).transpose()?;
    if fallback.as_deref().is_some_and(|f| !f.contains('/')) {
        return Err(ctx.err("fallback", "not a service's namespace/hostname"));
    }
    let scale_from_zero = scale_from_zero
        .map(|nm::ScaleFromZero { autoscaler_url, hold_timeout_ms, max_held }| {
            let url = ctx.nonempty("scale_from_zero.autoscaler_url", &autoscaler_url)?;
            let uri = url.parse::<http::Uri>().ok();
            if uri.as_ref().is_none_or(|u| u.scheme_str() != Some("http") || u.authority().is_none()) {
                return Err(
                    ctx.err("scale_from_zero.autoscaler_url", format!("{url:?} is not an http:// URL"))
                );
            }
            if max_held == 0 {
                return Err(ctx.err("scale_from_zero.max_held", "must be at least 1"));
            }
            Ok(ScaleFromZero {
                autoscaler_url: url,
                hold_timeout: positive(&ctx, "scale_from_zero.hold_timeout_ms", hold_timeout_ms)?,
                max_held,
            })
        })
        .transpose()?;
    let policy = ServicePolicy {
        algorithm,
        connect_timeout: (connect_timeout_ms > 0).then(|| Duration::from_millis(connect_timeout_ms.into())),
        max_connections: (max_connections > 0).then_some(max_connections),
        outlier_detection,
        rate_limits,
        fallback,
        scale_from_zero,
    };
    Ok((service, policy))
}

fn positive(ctx: &Ctx<'_>, field: &str, ms: u32) -> Result<Duration, Invalid> {
    if ms == 0 {
        return Err(ctx.err(field, "must be more than 0"));
    }
    Ok(Duration::from_millis(ms.into()))
}
