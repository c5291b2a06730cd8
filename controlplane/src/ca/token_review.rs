//! Agents authenticated by Kubernetes: the agent presents its projected service-account token
//! (bound to its pod, with an audience of its own), and the control plane asks the API server
//! about it with a `TokenReview` (authentication.k8s.io/v1).
//!
//! A token is accepted only when the review says it is authenticated, for our audience (the
//! API server echoes the audiences it accepted the token for; a token for another audience
//! must never be replayable here), as the agents' own service account, and names the node its
//! pod is bound to (`authentication.kubernetes.io/node-name`, set by Kubernetes 1.30 and
//! later for pod-bound tokens). The node then limits which identities it may get, exactly as a
//! bootstrap token's node does.
//!
//! Positive answers are cached for a short while, keyed by a digest of the token (the token
//! itself is never kept), so an agent refreshing many identities makes one review, not one per
//! certificate. Refusals are not cached: a token that starts working (a pod just scheduled) is
//! not held back.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::{Api, Client, api::PostParams};

/// The `user.extra` key the API server puts a pod-bound token's node name under.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// How long an accepted token is trusted without asking again.
pub const CACHE_FOR: Duration = Duration::from_secs(60);
/// Past this many cached tokens, expired ones are dropped (and, if that is not enough, all):
/// a flood of distinct tokens cannot grow the cache without bound.
const CACHE_LIMIT: usize = 10_000;

/// The service account the agents run as: only its tokens are accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// The username Kubernetes authenticates the account's tokens as.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for ServiceAccount {
    type Err = String;

    /// `<namespace>/<name>`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self { namespace: namespace.into(), name: name.into() })
            }
            _ => Err(format!("{s:?}: expected <namespace>/<service account>")),
        }
    }
}

/// What the TokenReview check needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenReviewSettings {
    /// The audience agents' tokens are made for (`serviceAccountToken.audience` in the pod).
    pub audience: String,
    /// The agents' service account.
    pub agent: ServiceAccount,
}

/// Why a token was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The token is not (or not for this) an agent's: the caller's fault.
    Unauthenticated(String),
    /// The API server could not be asked: try again later.
    Unavailable(String),
}

/// The node a reviewed token authenticates, or why it does not. Pure: the whole decision, so
/// it is tested without an API server.
pub fn decide(status: &TokenReviewStatus, settings: &TokenReviewSettings) -> Result<String, String> {
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().unwrap_or("no reason given");
        return Err(format!("the API server did not authenticate the token: {why}"));
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.contains(&settings.audience) {
        return Err(format!(
            "the token is not for audience {:?} (it is for {audiences:?})",
            settings.audience
        ));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    if username != settings.agent.username() {
        return Err(format!("{username:?} is not the agents' service account {}", settings.agent.username()));
    }
    let node = user
        .and_then(|u| u.extra.as_ref())
        .and_then(|extra| extra.get(NODE_NAME_EXTRA))
        .and_then(|names| names.first())
        .filter(|name| !name.is_empty());
    node.cloned().ok_or_else(|| {
        format!("the token names no node ({NODE_NAME_EXTRA}): a pod-bound token, Kubernetes 1.30 or later, is needed")
    })
}

/// Reviews tokens with the API server, caching accepted ones.
pub struct TokenReviewer {
    reviews: Api<TokenReview>,
    settings: TokenReviewSettings,
    /// SHA-256 of an accepted token → its node and when that stops being trusted.
    accepted: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl TokenReviewer {
    pub fn new(client: Client, settings: TokenReviewSettings) -> Self {
        Self { reviews: Api::all(client), settings, accepted: Mutex::default() }
    }

    /// The node `token` authenticates.
    pub async fn node_of(&self, token: &str) -> Result<String, Refused> {
        let key = digest(token);
        let now = Instant::now();
        if let Some((node, until)) = self.cache().get(&key)
            && *until > now
        {
            return Ok(node.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.settings.audience.clone()]),
            },
            ..Default::default()
        };
        let reviewed = self
            .reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refused::Unavailable(format!("TokenReview: {e}")))?;
        let node =
            decide(&reviewed.status.unwrap_or_default(), &self.settings).map_err(Refused::Unauthenticated)?;
        let mut cache = self.cache();
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(key, (node.clone(), now + CACHE_FOR));
        Ok(node)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (String, Instant)>> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn settings() -> TokenReviewSettings {
        TokenReviewSettings {
            audience: "nodemesh-ca".into(),
            agent: "nodemesh/nodemesh-agent".parse().expect("service account"),
        }
    }

    fn status(
        authenticated: bool,
        audiences: &[&str],
        username: &str,
        node: Option<&str>,
    ) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            error: None,
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: node.map(|n| [(NODE_NAME_EXTRA.to_owned(), vec![n.to_owned()])].into()),
                ..Default::default()
            }),
        }
    }

    const AGENT: &str = "system:serviceaccount:nodemesh:nodemesh-agent";

    #[test]
    fn an_agents_pod_bound_token_for_our_audience_gives_its_node() {
        assert_eq!(
            decide(&status(true, &["nodemesh-ca"], AGENT, Some("node1")), &settings()),
            Ok("node1".into())
        );
        // Several audiences, ours among them.
        assert_eq!(
            decide(
                &status(true, &["https://kubernetes.default.svc", "nodemesh-ca"], AGENT, Some("n")),
                &settings()
            ),
            Ok("n".into())
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let s = settings();
        let refused = |st: TokenReviewStatus| decide(&st, &s).expect_err("refused");
        assert!(
            refused(status(false, &["nodemesh-ca"], AGENT, Some("node1"))).contains("did not authenticate")
        );
        assert!(refused(status(true, &["other"], AGENT, Some("node1"))).contains("audience"));
        assert!(refused(status(true, &[], AGENT, Some("node1"))).contains("audience"));
        let other_sa = "system:serviceaccount:shop:default";
        assert!(refused(status(true, &["nodemesh-ca"], other_sa, Some("node1"))).contains("service account"));
        assert!(
            refused(status(true, &["nodemesh-ca"], "kubernetes-admin", Some("node1")))
                .contains("service account")
        );
        assert!(refused(status(true, &["nodemesh-ca"], AGENT, None)).contains("names no node"));
        assert!(refused(status(true, &["nodemesh-ca"], AGENT, Some(""))).contains("names no node"));
        assert!(refused(TokenReviewStatus::default()).contains("did not authenticate"));
    }

    #[test]
    fn a_service_account_is_namespace_slash_name() {
        let sa: ServiceAccount = "nodemesh/agent".parse().expect("parsed");
        assert_eq!(sa.username(), "system:serviceaccount:nodemesh:agent");
        for bad in ["agent", "/agent", "nodemesh/", "a/b/c"] {
            assert!(bad.parse::<ServiceAccount>().is_err(), "{bad}");
        }
    }
}
