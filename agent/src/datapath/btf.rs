//! Just enough of a BTF reader to find where a kernel struct keeps a field.
//!
//! Rust eBPF has no CO-RE relocations, so the kernel-internal fields a program reads
//! (`tcp_sock.bytes_sent` and `.bytes_retrans` for splice backpressure, `.copied_seq` for its
//! sequence tracking; a few `sk_buff` fields for the drop tracer) get their offsets
//! from the running kernel's own type information at load time, handed to the program as a
//! read-only global the verifier treats as constants. Nothing is hard-coded per kernel.

use std::{fs, io, path::Path};

use nodemesh_common::{SkBuffOffsets, TcpSockOffsets};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("not BTF data (bad magic)")]
    Magic,
    #[error("truncated BTF data")]
    Truncated,
    #[error("unknown BTF kind {0}")]
    UnknownKind(u32),
    #[error("struct {0} not found")]
    NoStruct(String),
    #[error("struct {0} has no field {1}")]
    NoField(String, String),
    #[error("{0}.{1} is a bit field")]
    BitField(String, String),
}

fn vmlinux() -> Result<Vec<u8>, BtfError> {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    fs::read(path).map_err(|source| BtfError::Read { path: path.display().to_string(), source })
}

/// Where the running kernel's `struct sk_buff` keeps what the drop tracer reads.
pub fn sk_buff_offsets() -> Result<SkBuffOffsets, BtfError> {
    let data = vmlinux()?;
    Ok(SkBuffOffsets {
        head: field_offset(&data, "sk_buff", "head")?,
        network_header: field_offset(&data, "sk_buff", "network_header")?,
        transport_header: field_offset(&data, "sk_buff", "transport_header")?,
        protocol: field_offset(&data, "sk_buff", "protocol")?,
    })
}

/// The kernel's drop reasons (`enum skb_drop_reason`), value → name without the
/// `SKB_DROP_REASON_` prefix, for flows and metrics.
pub fn drop_reasons() -> Result<Vec<(u32, String)>, BtfError> {
    let mut names = enum_names(&vmlinux()?, "skb_drop_reason")?;
    for (_, name) in &mut names {
        if let Some(short) = name.strip_prefix("SKB_DROP_REASON_") {
            *name = short.to_owned();
        }
    }
    Ok(names)
}

/// Where the running kernel's `struct tcp_sock` keeps what the splice verdict reads.
pub fn tcp_sock_offsets() -> Result<TcpSockOffsets, BtfError> {
    let data = vmlinux()?;
    Ok(TcpSockOffsets {
        bytes_sent: field_offset(&data, "tcp_sock", "bytes_sent")?,
        bytes_retrans: field_offset(&data, "tcp_sock", "bytes_retrans")?,
        copied_seq: field_offset(&data, "tcp_sock", "copied_seq")?,
        _pad: 0,
    })
}

struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn u32(&self, at: usize) -> Result<u32, BtfError> {
        let bytes = self.data.get(at..at + 4).ok_or(BtfError::Truncated)?;
        Ok(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn str(&self, strings: usize, offset: u32) -> Result<&str, BtfError> {
        let start = strings + offset as usize;
        let rest = self.data.get(start..).ok_or(BtfError::Truncated)?;
        let end = rest.iter().position(|&b| b == 0).ok_or(BtfError::Truncated)?;
        std::str::from_utf8(&rest[..end]).map_err(|_| BtfError::Truncated)
    }
}

/// One entry of the type section, as far as the lookups below need it.
#[derive(Clone, Copy)]
struct TypeEntry {
    kind: u32,
    name_off: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Where the kind-specific data (members, enumerators) starts.
    body: usize,
}

/// A parsed BTF blob: its types by id (id 0 is `void`) and its string section.
struct Btf<'a> {
    r: Reader<'a>,
    strings: usize,
    types: Vec<TypeEntry>,
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let r = Reader { data };
        let magic = u16::from_ne_bytes([
            *data.first().ok_or(BtfError::Truncated)?,
            *data.get(1).ok_or(BtfError::Truncated)?,
        ]);
        if magic != MAGIC {
            return Err(BtfError::Magic);
        }
        let header_len = r.u32(4)? as usize;
        let (type_off, type_len) = (r.u32(8)? as usize, r.u32(12)? as usize);
        let str_off = r.u32(16)? as usize;
        let (start, strings) = (header_len + type_off, header_len + str_off);
        let void = TypeEntry { kind: 0, name_off: 0, vlen: 0, kind_flag: false, size_or_type: 0, body: 0 };
        let mut types = vec![void];
        let mut at = start;
        while at < start + type_len {
            let (name_off, info, size_or_type) = (r.u32(at)?, r.u32(at + 4)?, r.u32(at + 8)?);
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1);
            let body = at + 12;
            types.push(TypeEntry { kind, name_off, vlen, kind_flag, size_or_type, body });
            at = body + trailing_bytes(kind, vlen)?;
        }
        Ok(Self { r, strings, types })
    }

    fn name(&self, t: &TypeEntry) -> Result<&str, BtfError> {
        self.r.str(self.strings, t.name_off)
    }

    fn named(&self, kind: u32, name: &str) -> Result<Option<&TypeEntry>, BtfError> {
        for t in &self.types {
            if t.kind == kind && self.name(t)? == name {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<&TypeEntry> {
        for _ in 0..16 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG.
                8 | 9 | 10 | 11 | 18 => id = t.size_or_type,
                _ => return Some(t),
            }
        }
        None
    }

    /// The byte offset of `field` in a struct or union, looking into anonymous members (the
    /// kernel groups fields that way, `struct_group` in `struct sk_buff` for one).
    fn member_offset(&self, t: &TypeEntry, field: &str, depth: u32) -> Result<Option<u32>, BtfError> {
        for i in 0..t.vlen {
            let member = t.body + i * 12;
            let (name_off, type_id, offset) =
                (self.r.u32(member)?, self.r.u32(member + 4)?, self.r.u32(member + 8)?);
            // With kind_flag the low 24 bits are the bit offset, the high 8 the bit field
            // size; without it the whole word is the bit offset.
            let (bit_size, bit_offset) =
                if t.kind_flag { (offset >> 24, offset & 0xff_ffff) } else { (0, offset) };
            let name = self.r.str(self.strings, name_off)?;
            if name == field {
                if bit_size != 0 || bit_offset % 8 != 0 {
                    return Err(BtfError::BitField(self.name(t)?.into(), field.into()));
                }
                return Ok(Some(bit_offset / 8));
            }
            if name.is_empty()
                && depth < 8
                && let Some(inner) =
                    self.resolve(type_id).filter(|i| i.kind == KIND_STRUCT || i.kind == KIND_UNION)
                && let Some(found) = self.member_offset(inner, field, depth + 1)?
            {
                return Ok(Some(bit_offset / 8 + found));
            }
        }
        Ok(None)
    }
}

pub fn field_offset(data: &[u8], name: &str, field: &str) -> Result<u32, BtfError> {
    let btf = Btf::parse(data)?;
    let t = btf.named(KIND_STRUCT, name)?.ok_or_else(|| BtfError::NoStruct(name.into()))?;
    btf.member_offset(t, field, 0)?.ok_or_else(|| BtfError::NoField(name.into(), field.into()))
}

/// The enumerators of enum `name`, value → name.
pub fn enum_names(data: &[u8], name: &str) -> Result<Vec<(u32, String)>, BtfError> {
    let btf = Btf::parse(data)?;
    let t = btf.named(KIND_ENUM, name)?.ok_or_else(|| BtfError::NoStruct(name.into()))?;
    (0..t.vlen)
        .map(|i| {
            let at = t.body + i * 8;
            Ok((btf.r.u32(at + 4)?, btf.r.str(btf.strings, btf.r.u32(at)?)?.to_owned()))
        })
        .collect()
}

/// Bytes that follow `struct btf_type` for each kind (linux/btf.h).
fn trailing_bytes(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        // INT, VAR, DECL_TAG: one u32.
        1 | 14 | 17 => 4,
        // ARRAY: struct btf_array.
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64: 12 bytes per member.
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM, FUNC_PROTO: 8 bytes per entry.
        6 | 13 => 8 * vlen,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        other => return Err(BtfError::UnknownKind(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `int` and `struct s { int a; int b; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0";
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_ne_bytes()));
        push(&[1, 1 << 24, 4, 32]); // [1] int: name "int", kind INT, size 4, 32 bits
        push(&[5, (4 << 24) | 2, 8]); // [2] struct s, two members, size 8
        push(&[7, 1, 0]); // a: int at bit 0
        push(&[9, 1, 32]); // b: int at bit 32
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&w.to_ne_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_member_offsets() {
        let btf = sample();
        assert_eq!(field_offset(&btf, "s", "a").expect("a"), 0);
        assert_eq!(field_offset(&btf, "s", "b").expect("b"), 4);
        assert!(matches!(field_offset(&btf, "s", "c"), Err(BtfError::NoField(..))));
        assert!(matches!(field_offset(&btf, "t", "a"), Err(BtfError::NoStruct(..))));
        assert!(matches!(field_offset(&btf[..20], "s", "a"), Err(BtfError::Truncated)));
    }

    #[test]
    fn reads_the_running_kernel() {
        // Every kernel this agent supports has BTF and these tcp_sock fields (u64s, a u32).
        let offsets = tcp_sock_offsets().expect("tcp_sock offsets");
        for offset in [offsets.bytes_sent, offsets.bytes_retrans] {
            assert!(offset > 0 && offset.is_multiple_of(8), "{offsets:?}");
        }
        assert!(offsets.copied_seq > 0 && offsets.copied_seq.is_multiple_of(4), "{offsets:?}");
        // network_header, transport_header and protocol sit in an anonymous struct_group.
        let skb = sk_buff_offsets().expect("sk_buff offsets");
        assert!(
            skb.head > 0 && skb.network_header > 0 && skb.transport_header > 0 && skb.protocol > 0,
            "{skb:?}"
        );
        assert_ne!(skb.network_header, skb.transport_header);
        let reasons = drop_reasons().expect("drop reasons");
        assert!(reasons.iter().any(|(_, n)| n == "NETFILTER_DROP"), "{reasons:?}");
        // ebpf/src/drops.rs skips this value by number.
        assert!(reasons.contains(&(2, "NOT_SPECIFIED".to_owned())), "{reasons:?}");
    }
}
