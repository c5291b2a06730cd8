//! Workload identities on this node: certificates from the mesh's CA for the identities of
//! the enrolled pods (keys generated here, in memory only), and the TLS settings HBONE uses
//! with them.

pub mod ca_client;
pub mod certificate;
pub mod manager;
pub mod probe;
pub mod roots;
pub mod san;
pub mod tls;

pub use ca_client::{CaClient, CaSettings};
pub use manager::{IdentityManager, Slot, Unavailable};
pub use roots::MeshRoots;
