//! A request and its response as they cross the proxy: hop-by-hop headers stay on their hop
//! (RFC 9110 §7.6.1), the request's target takes the form its upstream protocol wants
//! (origin form with `Host` for HTTP/1.1, scheme and `:authority` for HTTP/2), and an
//! upgrade keeps the headers that ask for it.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version, header, request::Parts};

use super::pool::Proto;

/// Headers that only ever concern one hop (as names, not strings: a string is parsed into a
/// name on every lookup, and this runs twice per request).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

/// Whether the request asks to switch protocols (WebSocket) or to open a tunnel (CONNECT):
/// its bytes then pass through once the endpoint agrees. `Upgrade: h2c` is not one: the
/// proxy picks each hop's HTTP version itself, as Envoy does, and drops the offer.
pub fn is_upgrade(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    *method == Method::CONNECT
        || (version <= Version::HTTP_11
            && headers.get(header::UPGRADE).is_some_and(|u| !u.as_bytes().eq_ignore_ascii_case(b"h2c"))
            && connection_has(headers, "upgrade"))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes the hop-by-hop headers, and those the `Connection` header names; an upgrade keeps
/// `Connection: upgrade` and `Upgrade`. `TE: trailers` stays (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !(t.is_empty() || upgrade && t == "upgrade"))
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade && let Some(value) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
}

/// Puts the request head in the form `proto` sends: HTTP/1.1 wants an origin-form target and
/// a `Host`; HTTP/2 a scheme and `:authority` (and no `Host`).
pub fn for_upstream(parts: &mut Parts, proto: Proto, upgrade: bool) {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned));
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    match proto {
        Proto::H1 => {
            parts.version = Version::HTTP_11;
            if let Some(authority) = &authority
                && let Ok(value) = HeaderValue::from_str(authority)
            {
                parts.headers.insert(header::HOST, value);
            }
            // CONNECT's target is the authority itself.
            let target = if parts.method == Method::CONNECT {
                authority.clone().unwrap_or_default()
            } else {
                path_and_query
            };
            if let Ok(uri) = target.parse::<Uri>() {
                parts.uri = uri;
            }
        }
        Proto::H2 => {
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
            let authority = authority.unwrap_or_else(|| "localhost".to_owned());
            if let Ok(uri) =
                Uri::builder().scheme("http").authority(authority).path_and_query(path_and_query).build()
            {
                parts.uri = uri;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(build: http::request::Builder) -> Parts {
        build.body(()).expect("request").into_parts().0
    }

    #[test]
    fn hop_by_hop_headers_stay_behind_and_te_trailers_goes_on() {
        let mut p = parts(
            http::Request::get("/a?b=1")
                .header("connection", "keep-alive, x-private")
                .header("x-private", "1")
                .header("keep-alive", "timeout=5")
                .header("te", "trailers")
                .header("host", "cart:8080")
                .header("x-kept", "yes"),
        );
        for_upstream(&mut p, Proto::H2, false);
        assert_eq!(p.uri.to_string(), "http://cart:8080/a?b=1");
        assert!(p.headers.get("x-private").is_none() && p.headers.get("keep-alive").is_none());
        assert!(p.headers.get("host").is_none(), "HTTP/2 carries :authority instead");
        assert_eq!(p.headers["te"], "trailers");
        assert_eq!(p.headers["x-kept"], "yes");
    }

    #[test]
    fn an_http2_request_to_an_http1_endpoint_gets_a_host_and_an_origin_form_target() {
        let mut p = parts(http::Request::get("http://cart.shop:80/x").version(Version::HTTP_2));
        for_upstream(&mut p, Proto::H1, false);
        assert_eq!((p.uri.to_string().as_str(), p.version), ("/x", Version::HTTP_11));
        assert_eq!(p.headers["host"], "cart.shop:80");
    }

    #[test]
    fn an_upgrade_keeps_the_headers_that_ask_for_it() {
        let mut p = parts(
            http::Request::get("/ws")
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-key", "k"),
        );
        assert!(is_upgrade(&p.method, p.version, &p.headers));
        for_upstream(&mut p, Proto::H1, true);
        assert_eq!(
            (p.headers["connection"].as_bytes(), p.headers["upgrade"].as_bytes()),
            (&b"upgrade"[..], &b"websocket"[..])
        );
        assert_eq!(p.headers["sec-websocket-key"], "k");
        let up = |p: Parts| is_upgrade(&p.method, p.version, &p.headers);
        assert!(!up(parts(http::Request::get("/").header("upgrade", "websocket"))), "no Connection: upgrade");
        assert!(!up(parts(http::Request::get("/").header("connection", "upgrade").header("upgrade", "h2c"))));
        assert!(up(parts(http::Request::connect("db:5432"))));
    }
}
