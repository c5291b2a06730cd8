//! The authorize stage: the destination's policies, checked where the proxy is the
//! destination's side. Inbound, and outbound to a pod of this node (whose inbound side the
//! proxy skips), are checked here; an outbound connection leaving the node is checked by the
//! destination's own node.

use std::sync::Arc;

use crate::authz::{Caller, Policies};

use super::{
    context::{Authenticated, Classified},
    revoke::Subject,
};

/// `Err` carries the flow's reason (`denied_by:<namespace>/<name>`, ...). `Ok(Some)` is what
/// the decision was made on, for checking the connection again when policies change;
/// `Ok(None)`: not this proxy's to check.
pub fn authorize(classified: &Classified, policies: &Policies) -> Result<Option<Subject>, String> {
    let Some(subject) = subject(classified) else { return Ok(None) };
    let caller = Caller { ip: subject.caller_ip, identity: subject.caller_identity.as_deref() };
    policies.check(&subject.target, subject.to, &caller)?;
    Ok(Some(subject))
}

/// What the destination's policies are checked on, where this proxy is the destination's
/// side.
fn subject(classified: &Classified) -> Option<Subject> {
    // No original destination: nothing to check against; the route stage refuses it.
    let dst = classified.original?;
    if classified.authenticated == Authenticated::LocalPod && classified.local_destination.is_none() {
        return None;
    }
    let target = classified.policy_target()?;
    let caller_identity = match &classified.authenticated {
        Authenticated::No => None,
        Authenticated::LocalPod => classified.source.workload.as_ref().map(|w| Arc::clone(&w.identity)),
        Authenticated::Mtls(id) => Some(Arc::clone(id)),
    };
    Some(Subject { target, to: dst, caller_ip: classified.source.addr.ip(), caller_identity })
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
        assert!(matches!(authorize(&classified(true, false), &policies), Ok(None)));
        // Outbound to a pod of this node: checked here, with the source vouched for.
        assert_eq!(
            authorize(&classified(true, true), &policies).err(),
            Some("denied_by:shop/no-shop".into())
        );
        // Inbound plaintext: checked, but the source's namespace is unknown, so a rule on it
        // cannot match.
        assert!(matches!(authorize(&classified(false, false), &policies), Ok(Some(_))));
    }
}
