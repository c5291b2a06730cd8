//! Just enough of a BTF reader to find where a kernel struct keeps a field.
//!
//! Rust eBPF has no CO-RE relocations, so the one kernel-internal field a program reads
//! (`tcp_sock.bytes_sent` and `.bytes_retrans`, for splice backpressure) get their offsets
//! from the running kernel's own type information at load time, handed to the program as a
//! read-only global the verifier treats as constants. Nothing is hard-coded per kernel.

use std::{fs, io, path::Path};

use nodemesh_common::TcpSockOffsets;

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

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

/// Where the running kernel's `struct tcp_sock` keeps what the splice verdict reads.
pub fn tcp_sock_offsets() -> Result<TcpSockOffsets, BtfError> {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    let data =
        fs::read(path).map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
    Ok(TcpSockOffsets {
        bytes_sent: field_offset(&data, "tcp_sock", "bytes_sent")?,
        bytes_retrans: field_offset(&data, "tcp_sock", "bytes_retrans")?,
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

pub fn field_offset(data: &[u8], name: &str, field: &str) -> Result<u32, BtfError> {
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
    let (types, strings) = (header_len + type_off, header_len + str_off);

    let mut at = types;
    while at < types + type_len {
        let (name_off, info) = (r.u32(at)?, r.u32(at + 4)?);
        let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1);
        let body = at + 12;
        if kind == KIND_STRUCT && r.str(strings, name_off)? == name {
            for i in 0..vlen {
                let member = body + i * 12;
                if r.str(strings, r.u32(member)?)? == field {
                    let offset = r.u32(member + 8)?;
                    // With kind_flag the low 24 bits are the bit offset, the high 8 the bit
                    // field size; without it the whole word is the bit offset.
                    let (bit_size, bit_offset) =
                        if kind_flag { (offset >> 24, offset & 0xff_ffff) } else { (0, offset) };
                    if bit_size != 0 || bit_offset % 8 != 0 {
                        return Err(BtfError::BitField(name.into(), field.into()));
                    }
                    return Ok(bit_offset / 8);
                }
            }
            return Err(BtfError::NoField(name.into(), field.into()));
        }
        at = body + trailing_bytes(kind, vlen)?;
    }
    Err(BtfError::NoStruct(name.into()))
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
        // Every kernel this agent supports has BTF and these tcp_sock fields (u64s).
        let offsets = tcp_sock_offsets().expect("tcp_sock offsets");
        for offset in [offsets.bytes_sent, offsets.bytes_retrans] {
            assert!(offset > 0 && offset.is_multiple_of(8), "{offsets:?}");
        }
    }
}
