//! Choosing an endpoint: which endpoints may take the connection (healthy, serving the
//! port, of the address family, not ejected, not already tried), the nearest tier of them
//! by the service's routing preference, then one of that tier by the service's algorithm.

use std::{
    cell::Cell,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicUsize, atomic::Ordering::Relaxed},
    time::Instant,
};

use super::endpoint::EndpointState;
use crate::services::{Algorithm, Endpoint, EndpointKey, Here, LocalityMode, ServiceInfo};

/// An endpoint that may take the connection.
#[derive(Clone, Debug)]
pub struct Candidate<'s> {
    pub endpoint: &'s Endpoint,
    pub addr: SocketAddr,
    pub state: Arc<EndpointState>,
}

/// Why no endpoint was picked (the flow's reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The service has no endpoint at all (scaled to zero, or nothing selected).
    None,
    /// It has endpoints, but none may take the connection now (unhealthy, ejected, already
    /// tried, or outside a strict locality).
    NoneHealthy,
    /// The service has no such port.
    NoPort,
}

impl NoEndpoint {
    pub fn reason(self) -> &'static str {
        match self {
            NoEndpoint::None => "no_endpoints",
            NoEndpoint::NoneHealthy => "no_healthy_endpoint",
            NoEndpoint::NoPort => "no_service_port",
        }
    }
}

/// What the pick needs besides the service.
pub struct Ask<'a> {
    pub port: u16,
    pub v4: bool,
    pub here: &'a Here,
    pub now: Instant,
    /// Endpoints this connection already tried.
    pub tried: &'a [EndpointKey],
}

/// The nearest tier of endpoints that may take the connection.
pub fn candidates<'s>(
    service: &'s ServiceInfo,
    ask: &Ask<'_>,
    state_of: impl Fn(&Endpoint) -> Arc<EndpointState>,
) -> Result<Vec<Candidate<'s>>, NoEndpoint> {
    if service.endpoints.is_empty() {
        return Err(NoEndpoint::None);
    }
    let Some(declared) = service.port(ask.port).map(|p| p.target) else { return Err(NoEndpoint::NoPort) };
    let lb = &service.load_balancing;
    let full = lb.routing_preference.len();
    let mut ranked: Vec<(usize, Candidate<'s>)> = service
        .endpoints
        .iter()
        .filter(|e| e.healthy || lb.allow_unhealthy)
        .filter(|e| !ask.tried.iter().any(|t| e.is(t)))
        .filter_map(|e| {
            let addr = SocketAddr::new(e.ip(ask.v4)?, e.target_port(&service.name, ask.port, declared)?);
            let rank = ask.here.rank(&lb.routing_preference, e);
            if lb.mode == LocalityMode::Strict && rank < full {
                return None;
            }
            let state = state_of(e);
            state.ejected_until(ask.now).is_none().then_some((rank, Candidate { endpoint: e, addr, state }))
        })
        .collect();
    let Some(best) = ranked.iter().map(|(rank, _)| *rank).max() else {
        return Err(NoEndpoint::NoneHealthy);
    };
    ranked.retain(|(rank, _)| *rank == best);
    Ok(ranked.into_iter().map(|(_, c)| c).collect())
}

/// One of `tier` (never empty) by `algorithm`; `rr` is the service's round-robin cursor.
pub fn choose<'c, 's>(
    tier: &'c [Candidate<'s>],
    algorithm: Algorithm,
    rr: &AtomicUsize,
    now: Instant,
) -> &'c Candidate<'s> {
    let n = tier.len();
    if n == 1 {
        return &tier[0];
    }
    match algorithm {
        Algorithm::RoundRobin => &tier[rr.fetch_add(1, Relaxed) % n],
        Algorithm::Random => &tier[random_below(n)],
        Algorithm::P2cEwma => {
            let a = random_below(n);
            // A second, distinct one.
            let b = (a + 1 + random_below(n - 1)) % n;
            let (ca, cb) = (tier[a].state.cost(now), tier[b].state.cost(now));
            if ca <= cb { &tier[a] } else { &tier[b] }
        }
    }
}

/// A uniform draw in `0..n`.
fn random_below(n: usize) -> usize {
    ((random() >> 11) % n as u64) as usize
}

/// A draw from a per-thread xorshift generator: balancing (and weighted routing) needs
/// spread, not secrecy.
pub fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

fn seed() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let here = &nanos as *const u64 as u64;
    (nanos ^ here.rotate_left(32)) | 1
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::IpAddr, time::Duration};

    use super::*;
    use crate::{
        services::{LoadBalancing, Locality, Scope},
        workload::{Names, WorkloadRef},
    };

    const CART: &str = "shop/cart.shop.svc.cluster.local";

    fn endpoint(uid: &str, node: &str, ip: [u8; 4]) -> Endpoint {
        let mut workload = WorkloadRef::new(Names { namespace: "shop", pod: uid, ..Default::default() });
        workload.services = vec![(CART.into(), vec![(80, 8080)])];
        Endpoint {
            ipv4: Some(ip.into()),
            ipv6: Some([0xfd00, 0, 0, 0, 0, 0, 0, u16::from(ip[3])].into()),
            workload: Arc::new(workload),
            node: node.into(),
            locality: Arc::default(),
            healthy: true,
        }
    }

    fn service(lb: LoadBalancing) -> ServiceInfo {
        ServiceInfo {
            name: CART.into(),
            vips: vec![IpAddr::from([10, 96, 0, 1])],
            ports: vec![crate::services::ServicePort {
                port: 80,
                target: 8080,
                protocol: crate::services::http::AppProtocol::Tcp,
            }],
            http_routes: None,
            load_balancing: lb,
            policy: Arc::default(),
            endpoints: vec![
                endpoint("a", "n1", [10, 0, 0, 1]),
                endpoint("b", "n2", [10, 0, 0, 2]),
                endpoint("c", "n2", [10, 0, 0, 3]),
            ],
        }
    }

    struct States(std::sync::Mutex<HashMap<EndpointKey, Arc<EndpointState>>>);

    impl States {
        fn new() -> Self {
            Self(std::sync::Mutex::default())
        }
        fn of(&self, e: &Endpoint) -> Arc<EndpointState> {
            Arc::clone(self.0.lock().expect("lock").entry(e.key()).or_default())
        }
    }

    fn uids(c: &[Candidate<'_>]) -> Vec<String> {
        c.iter().map(|c| c.endpoint.workload.pod.to_string()).collect()
    }

    #[test]
    fn the_nearest_tier_wins_and_strict_never_leaves_it() {
        let here = Here { node: "n1".into(), locality: Locality::default() };
        let states = States::new();
        let ask = |tried: &'static [EndpointKey]| Ask {
            port: 80,
            v4: true,
            here: &here,
            now: Instant::now(),
            tried,
        };
        let near = LoadBalancing { routing_preference: vec![Scope::Node], ..Default::default() };
        let s = service(near.clone());
        assert_eq!(uids(&candidates(&s, &ask(&[]), |e| states.of(e)).expect("tier")), ["a"]);
        // Failover: the local one tried, the next tier.
        let tried: &'static [EndpointKey] =
            Box::leak(Box::new([(Arc::<str>::from("shop"), Arc::<str>::from("a"))]));
        assert_eq!(uids(&candidates(&s, &ask(tried), |e| states.of(e)).expect("tier")), ["b", "c"]);
        // Strict: nothing else.
        let strict = service(LoadBalancing { mode: LocalityMode::Strict, ..near });
        assert_eq!(candidates(&strict, &ask(tried), |e| states.of(e)).err(), Some(NoEndpoint::NoneHealthy));
        // No preference: everyone.
        let any = service(LoadBalancing::default());
        assert_eq!(uids(&candidates(&any, &ask(&[]), |e| states.of(e)).expect("tier")), ["a", "b", "c"]);
    }

    #[test]
    fn unhealthy_ejected_and_portless_endpoints_are_left_out() {
        let here = Here::default();
        let states = States::new();
        let mut s = service(LoadBalancing::default());
        s.endpoints[0].healthy = false;
        Arc::make_mut(&mut s.endpoints[1].workload).services = vec![(CART.into(), vec![(80, 0)])];
        let now = Instant::now();
        let ask = Ask { port: 80, v4: false, here: &here, now, tried: &[] };
        let tier = candidates(&s, &ask, |e| states.of(e)).expect("tier");
        assert_eq!(uids(&tier), ["c"]);
        assert_eq!(tier[0].addr, "[fd00::3]:8080".parse::<SocketAddr>().expect("addr"));
        let policy = crate::services::OutlierDetection {
            consecutive_errors: 1,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
        };
        assert!(states.of(&s.endpoints[2]).failed(Some(&policy), true, now));
        assert_eq!(candidates(&s, &ask, |e| states.of(e)).err(), Some(NoEndpoint::NoneHealthy));
        // A port the service does not have, and a service with nothing behind it.
        assert_eq!(
            candidates(&s, &Ask { port: 81, ..ask }, |e| states.of(e)).err(),
            Some(NoEndpoint::NoPort)
        );
        s.endpoints.clear();
        assert_eq!(
            candidates(&s, &Ask { port: 80, v4: true, here: &here, now, tried: &[] }, |e| states.of(e)).err(),
            Some(NoEndpoint::None)
        );
    }

    #[test]
    fn p2c_avoids_the_loaded_endpoint_and_round_robin_does_not() {
        let here = Here::default();
        let states = States::new();
        let s = service(LoadBalancing::default());
        let now = Instant::now();
        let ask = Ask { port: 80, v4: true, here: &here, now, tried: &[] };
        let tier = candidates(&s, &ask, |e| states.of(e)).expect("tier");
        tier[0].state.outstanding.store(50, Relaxed);
        let rr = AtomicUsize::new(0);
        let count = |algorithm| {
            (0..3000)
                .filter(|_| choose(&tier, algorithm, &rr, now).endpoint.workload.pod.as_ref() == "a")
                .count()
        };
        assert_eq!(count(Algorithm::RoundRobin), 1000);
        // P2C picks "a" only when both draws are "a", which they never are.
        assert_eq!(count(Algorithm::P2cEwma), 0);
        let random = count(Algorithm::Random);
        assert!((800..1200).contains(&random), "{random}");
    }
}
