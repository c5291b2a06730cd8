//! How a caller of the CA proves which node it is: a bootstrap token from the node token
//! directory, or (on Kubernetes) its service-account token reviewed by the API server. Either
//! way the answer is a node name, and the same per-node restriction follows.

use std::path::PathBuf;

use super::{
    service::NodeTokens,
    token_review::{Refused, TokenReviewSettings, TokenReviewer},
};

/// How nodes authenticate (the setting).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeAuth {
    /// One file per node holding its bootstrap token (`--node-token-dir`).
    Tokens(PathBuf),
    /// The agent's projected service-account token, checked by TokenReview
    /// (`--token-audience`, `--agent-service-account`; needs the Kubernetes source).
    TokenReview(TokenReviewSettings),
}

/// How nodes authenticate (running).
#[derive(Debug)]
pub enum NodeAuthenticator {
    Tokens(NodeTokens),
    TokenReview(Box<TokenReviewer>),
}

impl From<NodeTokens> for NodeAuthenticator {
    fn from(tokens: NodeTokens) -> Self {
        Self::Tokens(tokens)
    }
}

impl From<TokenReviewer> for NodeAuthenticator {
    fn from(reviewer: TokenReviewer) -> Self {
        Self::TokenReview(Box::new(reviewer))
    }
}

impl NodeAuthenticator {
    /// The node whose token `presented` is.
    pub async fn node_of(&self, presented: &str) -> Result<String, Refused> {
        match self {
            Self::Tokens(tokens) => tokens
                .node_of(presented)
                .ok_or_else(|| Refused::Unauthenticated("the bearer token is no node's".into())),
            Self::TokenReview(reviewer) => reviewer.node_of(presented).await,
        }
    }
}
