//! The agent's side of `istio.v1.auth.IstioCertificateService/CreateCertificate`, as ztunnel
//! calls it in node mode: a CSR, the lifetime wanted in seconds, and the identity asked for
//! in `metadata.ImpersonatedIdentity`; the node's bootstrap token as `authorization: Bearer`
//! (read again for every call, so a rotated token is used at once) and the cluster as
//! `clusterid`. Over TLS checked against the mesh root.

use std::{path::PathBuf, time::Duration};

use nodemesh_conventions::text;
use nodemesh_proto::{
    istio::v1::auth::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    },
    prost_types::{Struct, Value, value::Kind},
    tonic::{
        self,
        metadata::MetadataValue,
        transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
    },
};

use super::roots::MeshRoots;

#[derive(Clone, Debug)]
pub struct CaSettings {
    /// `https://host:15012`.
    pub address: String,
    /// The node's bootstrap token (docs/controlplane.md).
    pub token_file: PathBuf,
    pub cluster_id: String,
    /// Asked for; the CA may cap it.
    pub lifetime: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("the CA address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("the node token {path}: {reason}")]
    Token { path: String, reason: String },
    #[error("the CA refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
}

impl CaClientError {
    /// A short, stable label for the failure counters.
    pub fn kind(&self) -> &'static str {
        match self {
            CaClientError::Address { .. } => "address",
            CaClientError::Token { .. } => "token",
            CaClientError::Refused { code, .. } => match code {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                    "unreachable"
                }
                tonic::Code::PermissionDenied => "permission_denied",
                tonic::Code::Unauthenticated => "unauthenticated",
                _ => "refused",
            },
        }
    }
}

/// One channel to the CA, shared by every identity's refresh (it reconnects by itself).
#[derive(Clone)]
pub struct CaClient {
    settings: CaSettings,
    channel: Channel,
}

impl CaClient {
    pub fn new(settings: CaSettings, roots: &MeshRoots) -> Result<Self, CaClientError> {
        let address = settings.address.clone();
        let bad = |reason: String| CaClientError::Address { address: address.clone(), reason };
        if !address.starts_with("https://") {
            return Err(bad("must be https:// (the CA is only reached over TLS)".into()));
        }
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&roots.pem));
        let channel = Endpoint::from_shared(address.clone())
            .map_err(|e| bad(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Self { settings, channel })
    }

    /// The chain for `identity`, leaf first.
    pub async fn create(&self, identity: &str, csr_pem: String) -> Result<Vec<String>, CaClientError> {
        let token = read_token(&self.settings.token_file)?;
        let metadata = Struct {
            fields: [(
                "ImpersonatedIdentity".to_owned(),
                Value { kind: Some(Kind::StringValue(identity.into())) },
            )]
            .into(),
        };
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem,
            validity_duration: self.settings.lifetime.as_secs().max(1) as i64,
            metadata: Some(metadata),
        });
        let headers = request.metadata_mut();
        let bearer =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| CaClientError::Token {
                path: self.settings.token_file.display().to_string(),
                reason: "not a valid header value".into(),
            })?;
        headers.insert("authorization", bearer);
        if let Ok(cluster) = MetadataValue::try_from(self.settings.cluster_id.as_str()) {
            headers.insert("clusterid", cluster);
        }
        let mut client = IstioCertificateServiceClient::new(self.channel.clone());
        let response = client.create_certificate(request).await.map_err(|status| CaClientError::Refused {
            code: status.code(),
            // The CA's own words: bounded before they are kept or shown.
            message: text::peer(status.message()).into_owned(),
        })?;
        Ok(response.into_inner().cert_chain)
    }
}

pub fn read_token(path: &std::path::Path) -> Result<String, CaClientError> {
    let bad = |reason: String| CaClientError::Token { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(token.to_owned())
}
