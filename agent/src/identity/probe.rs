//! A start-up check of the mesh root against the control plane: one TLS handshake with the
//! `https://` address the agent was given. A certificate that does not lead to the mesh root
//! means the root file is the wrong one (or the address is): a clear start-up error, rather
//! than an agent that runs and never syncs. An address that does not answer is no error:
//! the agent serves its last good state until the control plane is back.

use std::{sync::Arc, time::Duration};

use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;

use super::{roots::MeshRoots, tls};

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
#[error(
    "{address} presented a certificate that the mesh root {root} does not vouch for ({reason}): \
     is mesh_root the control plane's root, and the address its TLS port?"
)]
pub struct WrongRoot {
    pub address: String,
    pub root: String,
    pub reason: String,
}

/// `Err` only when the control plane answered with a certificate the root does not accept.
pub async fn check(address: &str, roots: &MeshRoots, root_path: &str) -> Result<(), WrongRoot> {
    let Some(authority) = address.strip_prefix("https://").map(|a| a.trim_end_matches('/')) else {
        return Ok(());
    };
    let host = match authority.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => authority,
    };
    let Ok(name) = ServerName::try_from(host.to_owned()) else { return Ok(()) };
    let target = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:443") };
    let config = match ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    {
        Ok(builder) => builder.with_root_certificates(Arc::clone(&roots.store)).with_no_client_auth(),
        Err(_) => return Ok(()),
    };
    let handshake = async {
        let tcp = TcpStream::connect(&target).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, handshake).await {
        Ok(Err(e)) if is_certificate_error(&e) => {
            Err(WrongRoot { address: address.to_owned(), root: root_path.to_owned(), reason: e.to_string() })
        }
        Ok(Err(e)) => {
            tracing::warn!(%address, error = %e, "the control plane did not answer the start-up TLS check; going on");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(%address, "the control plane did not answer the start-up TLS check in time; going on");
            Ok(())
        }
        Ok(Ok(_)) => Ok(()),
    }
}

fn is_certificate_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::InvalidCertificate(_)))
}
