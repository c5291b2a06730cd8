//! The authorize stage: the destination's policies, checked where the proxy is the
//! destination's side. Inbound, and outbound to a pod of this node (whose inbound side the
//! proxy skips), are checked here; an outbound connection leaving the node is checked by the
//! destination's own node.

use crate::authz::{Caller, Policies};

use super::context::{Authenticated, Classified};

/// `Err` carries the flow's reason (`denied_by:<namespace>/<name>`, ...).
pub fn authorize(classified: &Classified, policies: &Policies) -> Result<(), String> {
    // No original destination: nothing to check against; the route stage refuses it.
    let Some(dst) = classified.original else { return Ok(()) };
    if classified.authenticated == Authenticated::LocalPod && classified.local_destination.is_none() {
        return Ok(());
    }
    let Some(target) = classified.policy_target() else { return Ok(()) };
    let source = Caller { ip: classified.source.addr.ip(), identity: classified.source_identity() };
    policies.check(&target, dst, &source)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        proxy::{
            context::{Party, Protocol},
            testing::{deny_namespace, pod},
        },
        workload::{Names, WorkloadRef},
    };

    fn classified(authenticated: bool, local: bool) -> Classified {
        let authenticated = if authenticated { Authenticated::LocalPod } else { Authenticated::No };
        let names =
            |ns, pod| Some(Arc::new(WorkloadRef::new(Names { namespace: ns, pod, ..Names::default() })));
        Classified {
            original: Some("10.0.0.2:8080".parse().expect("addr")),
            source: Party { addr: "10.0.0.1:4000".parse().expect("addr"), workload: names("shop", "web-1") },
            authenticated,
            destination: Party {
                addr: "10.0.0.2:8080".parse().expect("addr"),
                workload: names("shop", "cart-1"),
            },
            service: None,
            protocol: Protocol::Tcp,
            local_destination: local.then(|| pod("shop/cart-1", &["10.0.0.2"])),
        }
    }

    #[test]
    fn the_destinations_side_decides() {
        // A DENY for sources in namespace `shop`, applying to every workload of `shop`.
        let policies = deny_namespace("shop", "no-shop", "shop");
        // Outbound to another node: that node's proxy checks it.
        assert_eq!(authorize(&classified(true, false), &policies), Ok(()));
        // Outbound to a pod of this node: checked here, with the source vouched for.
        assert_eq!(authorize(&classified(true, true), &policies), Err("denied_by:shop/no-shop".into()));
        // Inbound plaintext: checked, but the source's namespace is unknown, so a rule on it
        // cannot match.
        assert_eq!(authorize(&classified(false, false), &policies), Ok(()));
    }
}
