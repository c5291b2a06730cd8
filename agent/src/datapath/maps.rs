//! What every pinned map must look like, and the handles the rest of the agent uses.
//!
//! A pin left by an earlier agent is adopted only if its type, key size, value size and
//! capacity match what this build expects; otherwise it is removed and created afresh. The
//! sizes come from the `nodemesh-common` types themselves, never typed in by hand.

use std::mem::size_of;

use aya::maps::MapType;
use nodemesh_common::{
    DatapathConfig, FlowKey, FlowStats, ListenerKey, OrigDstKey, SockAddr, counters, maps as names,
};

/// The shape of one pinned map.
#[derive(Clone, Copy, Debug)]
pub struct MapShape {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: usize,
    pub value_size: usize,
    pub max_entries: u32,
}

/// A socket map's value as user space writes it: the socket's file descriptor.
type SocketFd = u32;

pub const SHAPES: [MapShape; 7] = [
    MapShape {
        name: names::CONFIG,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<DatapathConfig>(),
        max_entries: 1,
    },
    MapShape {
        name: names::EXCLUDED_OUTBOUND,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: names::PORT_BITMAP_WORDS,
    },
    MapShape {
        name: names::EXCLUDED_INBOUND,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: names::PORT_BITMAP_WORDS,
    },
    MapShape {
        name: names::ORIG_DST,
        map_type: MapType::LruHash,
        key_size: size_of::<OrigDstKey>(),
        value_size: size_of::<SockAddr>(),
        max_entries: names::ORIG_DST_ENTRIES,
    },
    MapShape {
        name: names::LISTENERS,
        map_type: MapType::SockHash,
        key_size: size_of::<ListenerKey>(),
        value_size: size_of::<SocketFd>(),
        max_entries: names::LISTENER_ENTRIES,
    },
    MapShape {
        name: names::COUNTERS,
        map_type: MapType::PerCpuArray,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: counters::COUNT,
    },
    MapShape {
        name: names::FLOWS,
        map_type: MapType::LruHash,
        key_size: size_of::<FlowKey>(),
        value_size: size_of::<FlowStats>(),
        max_entries: names::FLOW_ENTRIES,
    },
];

pub fn shape(name: &str) -> Option<&'static MapShape> {
    SHAPES.iter().find(|s| s.name == name)
}

impl MapShape {
    /// Whether a pinned map (as the kernel describes it) has this shape.
    pub fn matches(&self, info: &aya::maps::MapInfo) -> bool {
        info.map_type().is_ok_and(|t| t == self.map_type)
            && info.key_size() as usize == self.key_size
            && info.value_size() as usize == self.value_size
            && info.max_entries() == self.max_entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_has_a_shape() {
        for name in names::PINNED {
            assert!(shape(name).is_some(), "{name} has no shape");
        }
        assert_eq!(SHAPES.len(), names::PINNED.len());
    }
}
