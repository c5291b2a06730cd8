//! IPv6 between dual-stack fake pods: outbound from an enrolled pod (to a pod on the node
//! and to the external host) and inbound from outside, byte-exact both ways.

use std::net::IpAddr;

use nodemesh_testbed::{
    AgentOptions,
    scenario::{BULK_PORT, SingleNode},
    tools,
};

fn over_ipv6(splice: bool) {
    let s = SingleNode::start("ipv6", &AgentOptions { splice, ..Default::default() }).expect("cluster");
    let server6 = IpAddr::from(s.server.ipv6.expect("dual-stack"));
    let client6 = s.client.ipv6.expect("dual-stack");

    for (what, target) in [("same-node pod", server6), ("external host", IpAddr::from(s.ext.ipv6))] {
        let out = s.client.output(tools::bulk_client(target, BULK_PORT, 3 << 20, 5 << 20)).expect("run");
        let r = tools::json_result(&format!("IPv6 outbound to {what}"), &out).expect("bulk");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["local"][0], "::1", "not intercepted over IPv6: {r}");
        assert_eq!(r["peer"][0], target.to_string(), "getpeername6 must show the original destination");
        let greeting = r["greeting"].as_str().expect("greeting");
        if what == "external host" {
            assert!(
                greeting.contains(&format!("peer=[{client6}]:")),
                "source must stay the pod's: {greeting}"
            );
        } else {
            assert!(greeting.contains("peer=[::1]:"), "{greeting}");
        }
    }

    let out = s.ext.output(tools::bulk_client(server6, BULK_PORT, 2 << 20, 2 << 20)).expect("run");
    let r = tools::json_result("IPv6 inbound", &out).expect("bulk");
    assert_eq!(r["ok"], true, "{r}");
    let greeting = r["greeting"].as_str().expect("greeting");
    assert!(greeting.contains(&format!("local=[{server6}]:{BULK_PORT}")), "{greeting}");
    assert!(greeting.contains("peer=[::1]:"), "inbound IPv6 was not proxied: {greeting}");
}

#[test]
fn outbound_and_inbound_over_ipv6_copy() {
    over_ipv6(false);
}

#[test]
fn outbound_and_inbound_over_ipv6_splice() {
    over_ipv6(true);
}
