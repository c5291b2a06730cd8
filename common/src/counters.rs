//! Reason codes: every decision a kernel program takes bumps one per-CPU counter, so an SRE
//! can tell from `nodemesh status` why a connection was or was not intercepted.

macro_rules! counters {
    ($( $variant:ident = ($program:literal, $reason:literal) ),+ $(,)?) => {
        /// Index into the per-CPU counter array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Counter {
            $( $variant, )+
        }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[ $( Counter::$variant, )+ ];

            /// The program that bumps the counter.
            pub const fn program(self) -> &'static str {
                match self { $( Counter::$variant => $program, )+ }
            }

            /// What happened, in snake case.
            pub const fn reason(self) -> &'static str {
                match self { $( Counter::$variant => $reason, )+ }
            }
        }
    };
}

counters! {
    ConnectRedirected = ("connect", "redirected"),
    ConnectSkipNotTcp = ("connect", "skip_not_tcp"),
    ConnectSkipLoopback = ("connect", "skip_loopback"),
    ConnectSkipExcludedPort = ("connect", "skip_excluded_port"),
    ConnectFailOpenNoListener = ("connect", "fail_open_no_listener"),
    ConnectFailOpenForeignListener = ("connect", "fail_open_foreign_listener"),
    ConnectFailOpenNoStorage = ("connect", "fail_open_no_storage"),
    ConnectFailOpenNoConfig = ("connect", "fail_open_no_config"),
    SockOpsOrigDstPublished = ("sock_ops", "orig_dst_published"),
    SockOpsOrigDstMapFull = ("sock_ops", "orig_dst_map_full"),
    GetPeerNameRestored = ("getpeername", "restored"),
    SkLookupSteered = ("sk_lookup", "steered"),
    SkLookupSkipNotTcp = ("sk_lookup", "skip_not_tcp"),
    SkLookupSkipLoopback = ("sk_lookup", "skip_loopback"),
    SkLookupSkipExcludedPort = ("sk_lookup", "skip_excluded_port"),
    SkLookupSkipNoListener = ("sk_lookup", "skip_no_listener"),
    SkLookupAssignFailed = ("sk_lookup", "assign_failed"),
    SpliceRedirected = ("splice", "redirected"),
    SplicePassedCatchUp = ("splice", "passed_catch_up"),
    SplicePassedBackpressure = ("splice", "passed_backpressure"),
    SplicePassedNoState = ("splice", "passed_no_state"),
    SplicePassedRedirectFailed = ("splice", "passed_redirect_failed"),
    SpliceDroppedEmpty = ("splice", "dropped_empty"),
    SpliceTrimmedHandOff = ("splice", "trimmed_hand_off"),
    SpliceTrimmedOverlap = ("splice", "trimmed_overlap"),
    SpliceDroppedDuplicate = ("splice", "dropped_duplicate"),
    SpliceBrokenGap = ("splice", "broken_gap"),
    SpliceBrokenTrimFailed = ("splice", "broken_trim_failed"),
    SpliceBrokenNoSeq = ("splice", "broken_no_seq"),
    SplicePassedBroken = ("splice", "passed_broken"),
    TcCounted = ("tc", "counted"),
    TcSkipNotIp = ("tc", "skip_not_ip"),
    TcSkipNotTcpUdp = ("tc", "skip_not_tcp_udp"),
    TcSkipFragment = ("tc", "skip_fragment"),
    TcSkipTruncated = ("tc", "skip_truncated"),
    TcFlowInsertFailed = ("tc", "flow_insert_failed"),
    TcpHealthTracked = ("sock_ops_proxy", "tracked"),
    TcpHealthSkipNodeNetns = ("sock_ops_proxy", "skip_node_netns"),
    TcpHealthSkipUntracked = ("sock_ops_proxy", "skip_untracked"),
    TcpHealthInsertFailed = ("sock_ops_proxy", "insert_failed"),
    DropCounted = ("kfree_skb", "counted"),
    DropSkipNoFlow = ("kfree_skb", "skip_no_flow"),
    DropSkipUnspecified = ("kfree_skb", "skip_unspecified_reason"),
    DropSkipNotIp = ("kfree_skb", "skip_not_ip"),
    DropSkipUnreadable = ("kfree_skb", "skip_unreadable"),
}

/// Number of counters (the per-CPU array's size).
pub const COUNT: u32 = Counter::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
