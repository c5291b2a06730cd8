//! What an HTTPRoute must be to be served: Gateway API's own rules (its CRD's bounds and
//! patterns, its CEL checks) and what the node proxy's HTTP stage can do. A route that fails
//! anywhere is refused whole, naming the field, e.g. `spec.rules[1].matches[0].path.value`.

use super::*;

/// Every check, first failure first.
pub(in crate::model) fn validate(route: &HttpRoute) -> Result<(), FieldError> {
    let spec = &route.spec;
    bound("spec.parentRefs", spec.parent_refs.len(), MAX_PARENT_REFS)?;
    for (i, parent) in spec.parent_refs.iter().enumerate() {
        parent_ref(&format!("spec.parentRefs[{i}]"), parent)?;
    }
    bound("spec.hostnames", spec.hostnames.len(), MAX_HOSTNAMES)?;
    for (i, host) in spec.hostnames.iter().enumerate() {
        hostname(host).map_err(|m| err(format!("spec.hostnames[{i}]"), m))?;
    }
    bound("spec.rules", spec.rules.len(), MAX_RULES)?;
    for (r, rule) in spec.rules.iter().enumerate() {
        self::rule(&format!("spec.rules[{r}]"), rule)?;
    }
    Ok(())
}

fn bound(field: &str, len: usize, max: usize) -> Result<(), FieldError> {
    if len > max {
        return Err(err(field, format!("{len} entries; Gateway API allows at most {max}")));
    }
    Ok(())
}

/// The core group (Service's): empty or absent.
fn core_group(field: String, group: Option<&str>) -> Result<(), FieldError> {
    match group {
        None | Some("") => Ok(()),
        Some(other) => {
            Err(err(field, format!("{other:?}: must be empty (the core group, which holds Service)")))
        }
    }
}

fn port(field: String, port: Option<i64>) -> Result<(), FieldError> {
    match port {
        Some(p) if !(1..=65535).contains(&p) => Err(err(field, format!("{p}: must be 1-65535"))),
        _ => Ok(()),
    }
}

fn parent_ref(at: &str, parent: &ParentRef) -> Result<(), FieldError> {
    match parent.kind.as_deref() {
        Some("Service") => {}
        // Absent is Gateway API's default: a Gateway.
        None | Some("Gateway") => {
            return Err(err(
                format!("{at}.kind"),
                "Gateway: Nodemesh has no gateways; attach the route to a Service (kind: Service, mesh mode)",
            ));
        }
        Some(other) => {
            return Err(err(
                format!("{at}.kind"),
                format!("{other:?}: only Service is supported (mesh mode)"),
            ));
        }
    }
    core_group(format!("{at}.group"), parent.group.as_deref())?;
    rules::dns1035_label(&parent.name).map_err(|m| err(format!("{at}.name"), m))?;
    if let Some(ns) = &parent.namespace {
        rules::dns_label(ns).map_err(|m| err(format!("{at}.namespace"), m))?;
    }
    port(format!("{at}.port"), parent.port)?;
    if parent.section_name.is_some() {
        return Err(err(
            format!("{at}.sectionName"),
            "not supported: a route attaches to a Service, or to one of its ports with `port`",
        ));
    }
    Ok(())
}

/// Gateway API's hostname: a DNS name, lowercase, optionally `*.`-prefixed.
fn hostname(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    rules::dns_subdomain(name)
        .map_err(|m| format!("{host:?} is not a hostname (a wildcard only as `*.`): {m}"))
}

fn rule(at: &str, rule: &Rule) -> Result<(), FieldError> {
    bound(&format!("{at}.matches"), rule.matches.len(), MAX_MATCHES)?;
    for (m, matched) in rule.matches.iter().enumerate() {
        self::matched(&format!("{at}.matches[{m}]"), matched)?;
    }
    // ReplacePrefixMatch replaces the matched prefix: every match must have one (Gateway
    // API's rule); a rule without matches matches the `/` prefix.
    let prefixes_only =
        rule.matches.iter().all(|m| m.path.as_ref().is_none_or(|p| p.kind == PathType::PathPrefix));
    filters(&format!("{at}.filters"), &rule.filters, prefixes_only)?;
    bound(&format!("{at}.backendRefs"), rule.backend_refs.len(), MAX_BACKEND_REFS)?;
    for (b, backend) in rule.backend_refs.iter().enumerate() {
        backend_ref(&format!("{at}.backendRefs[{b}]"), backend, prefixes_only)?;
    }
    if let Some(t) = &rule.timeouts
        && let (Some(request), Some(backend)) = (t.request, t.backend_request)
        && request.millis() > 0
        && backend > request
    {
        return Err(err(
            format!("{at}.timeouts.backendRequest"),
            format!("{backend} is longer than timeouts.request ({request}); it must not exceed it"),
        ));
    }
    if let Some(retry) = &rule.retry {
        for (c, code) in retry.codes.iter().enumerate() {
            if !(400..=599).contains(code) {
                return Err(err(format!("{at}.retry.codes[{c}]"), format!("{code}: must be 400-599")));
            }
        }
        if let Some(a) = retry.attempts
            && !(0..=i64::from(u32::MAX)).contains(&a)
        {
            return Err(err(format!("{at}.retry.attempts"), format!("{a}: must be 0 or more")));
        }
    }
    Ok(())
}

fn matched(at: &str, m: &Match) -> Result<(), FieldError> {
    if let Some(path) = &m.path {
        let field = format!("{at}.path.value");
        let value = path.value();
        match path.kind {
            PathType::Exact | PathType::PathPrefix => path_value(value).map_err(|e| err(field, e))?,
            PathType::RegularExpression => regex(value).map_err(|e| err(field, e))?,
        }
    }
    for (list, name, max_value) in
        [(&m.headers, "headers", MAX_HEADER_VALUE), (&m.query_params, "queryParams", MAX_QUERY_VALUE)]
    {
        bound(&format!("{at}.{name}"), list.len(), MAX_VALUE_MATCHES)?;
        for (i, v) in list.iter().enumerate() {
            let at = format!("{at}.{name}[{i}]");
            token(&v.name).map_err(|e| err(format!("{at}.name"), e))?;
            // Header names are case-insensitive; query parameter names are not.
            let same = |o: &ValueMatch| {
                if name == "headers" { o.name.eq_ignore_ascii_case(&v.name) } else { o.name == v.name }
            };
            if list[..i].iter().any(same) {
                return Err(err(
                    format!("{at}.name"),
                    format!("{:?} is matched twice; Gateway API allows one", v.name),
                ));
            }
            let value = format!("{at}.value");
            match v.kind {
                ValueType::Exact => text(&v.value, max_value).map_err(|e| err(value, e))?,
                ValueType::RegularExpression => regex(&v.value).map_err(|e| err(value, e))?,
            }
        }
    }
    Ok(())
}

/// An absolute path, as Gateway API requires of exact and prefix matches and replacements.
fn path_value(value: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!("{value:?} must start with '/'"));
    }
    if value.len() > MAX_PATH {
        return Err(format!("{} bytes; at most {MAX_PATH}", value.len()));
    }
    if !rules::printable(value) || value.contains(['?', '#']) {
        return Err(format!("{value:?} is not a path: no spaces, control characters, '?' or '#'"));
    }
    Ok(())
}

/// Compiled here, so a route the agent could not apply is refused where it is written; the
/// agent compiles it again with the same crate.
fn regex(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_PATH {
        return Err(format!("a regular expression of 1 to {MAX_PATH} bytes"));
    }
    regex::RegexBuilder::new(value)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(|_| ())
        .map_err(|e| format!("not a regular expression: {e}"))
}

/// An HTTP token (RFC 9110): header and query parameter names.
fn token(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok { Ok(()) } else { Err(format!("{name:?} is not an HTTP token of 1 to {MAX_NAME} characters")) }
}

/// A header or parameter value: non-empty, bounded, no control characters (they would split
/// a header).
fn text(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(format!("1 to {max} bytes without control characters"));
    }
    Ok(())
}

fn filters(at: &str, filters: &[Filter], prefixes_only: bool) -> Result<(), FieldError> {
    bound(at, filters.len(), MAX_FILTERS)?;
    for (i, f) in filters.iter().enumerate() {
        filter(&format!("{at}[{i}]"), f, prefixes_only)?;
        // Gateway API allows each of these once, and a redirect and a rewrite not together.
        if filters[..i].iter().any(|o| o.kind == f.kind) {
            return Err(err(
                format!("{at}[{i}].type"),
                format!("{:?} appears twice; Gateway API allows one", f.kind),
            ));
        }
    }
    let has = |kind| filters.iter().any(|f| f.kind == kind);
    if has(FilterType::RequestRedirect) && has(FilterType::UrlRewrite) {
        return Err(err(at, "RequestRedirect and URLRewrite cannot be used together"));
    }
    Ok(())
}

fn filter(at: &str, f: &Filter, prefixes_only: bool) -> Result<(), FieldError> {
    let present = [
        ("requestHeaderModifier", FilterType::RequestHeaderModifier, f.request_header_modifier.is_some()),
        ("responseHeaderModifier", FilterType::ResponseHeaderModifier, f.response_header_modifier.is_some()),
        ("requestRedirect", FilterType::RequestRedirect, f.request_redirect.is_some()),
        ("urlRewrite", FilterType::UrlRewrite, f.url_rewrite.is_some()),
        ("requestMirror", FilterType::RequestMirror, f.request_mirror.is_some()),
        ("extensionRef", FilterType::ExtensionRef, f.extension_ref.is_some()),
    ];
    if matches!(f.kind, FilterType::RequestMirror | FilterType::ExtensionRef) {
        return Err(err(
            format!("{at}.type"),
            format!(
                "{:?} is not supported: the node proxy's HTTP stage does not mirror or call extensions",
                f.kind
            ),
        ));
    }
    for (name, kind, is_there) in present {
        if kind == f.kind && !is_there {
            return Err(err(format!("{at}.{name}"), format!("required with type {kind:?}")));
        }
        if kind != f.kind && is_there {
            return Err(err(format!("{at}.{name}"), format!("must be absent with type {:?}", f.kind)));
        }
    }
    if let Some(m) = &f.request_header_modifier {
        header_modifier(&format!("{at}.requestHeaderModifier"), m)?;
    }
    if let Some(m) = &f.response_header_modifier {
        header_modifier(&format!("{at}.responseHeaderModifier"), m)?;
    }
    if let Some(r) = &f.request_redirect {
        let at = format!("{at}.requestRedirect");
        if let Some(scheme) = r.scheme.as_deref().filter(|s| !matches!(*s, "http" | "https")) {
            return Err(err(format!("{at}.scheme"), format!("{scheme:?} is not one of http, https")));
        }
        if let Some(host) = &r.hostname {
            hostname(host).map_err(|m| err(format!("{at}.hostname"), m))?;
        }
        if let Some(p) = &r.path {
            path_modifier(&format!("{at}.path"), p, prefixes_only)?;
        }
        port(format!("{at}.port"), r.port)?;
        if let Some(code) = r.status_code.filter(|c| !matches!(c, 301 | 302)) {
            return Err(err(format!("{at}.statusCode"), format!("{code} is not one of 301, 302")));
        }
    }
    if let Some(r) = &f.url_rewrite {
        let at = format!("{at}.urlRewrite");
        if let Some(host) = &r.hostname {
            hostname(host).map_err(|m| err(format!("{at}.hostname"), m))?;
        }
        if let Some(p) = &r.path {
            path_modifier(&format!("{at}.path"), p, prefixes_only)?;
        }
    }
    Ok(())
}

fn header_modifier(at: &str, m: &HeaderModifier) -> Result<(), FieldError> {
    for (list, name) in [(&m.set, "set"), (&m.add, "add")] {
        bound(&format!("{at}.{name}"), list.len(), MAX_VALUE_MATCHES)?;
        for (i, h) in list.iter().enumerate() {
            token(&h.name).map_err(|e| err(format!("{at}.{name}[{i}].name"), e))?;
            // An empty value is a header set to nothing, which HTTP allows.
            if h.value.len() > MAX_HEADER_VALUE || h.value.chars().any(char::is_control) {
                return Err(err(
                    format!("{at}.{name}[{i}].value"),
                    format!("at most {MAX_HEADER_VALUE} bytes without control characters"),
                ));
            }
        }
    }
    bound(&format!("{at}.remove"), m.remove.len(), MAX_VALUE_MATCHES)?;
    for (i, name) in m.remove.iter().enumerate() {
        token(name).map_err(|e| err(format!("{at}.remove[{i}]"), e))?;
    }
    Ok(())
}

fn path_modifier(at: &str, p: &PathModifier, prefixes_only: bool) -> Result<(), FieldError> {
    let (own, own_value, other, other_value) = match p.kind {
        PathModifierType::ReplaceFullPath => {
            ("replaceFullPath", &p.replace_full_path, "replacePrefixMatch", &p.replace_prefix_match)
        }
        PathModifierType::ReplacePrefixMatch => {
            ("replacePrefixMatch", &p.replace_prefix_match, "replaceFullPath", &p.replace_full_path)
        }
    };
    if other_value.is_some() {
        return Err(err(format!("{at}.{other}"), format!("must be absent with type {:?}", p.kind)));
    }
    let value = own_value
        .as_deref()
        .ok_or_else(|| err(format!("{at}.{own}"), format!("required with type {:?}", p.kind)))?;
    path_value(value).map_err(|m| err(format!("{at}.{own}"), m))?;
    if p.kind == PathModifierType::ReplacePrefixMatch && !prefixes_only {
        return Err(err(
            format!("{at}.type"),
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
        ));
    }
    Ok(())
}

fn backend_ref(at: &str, b: &BackendRef, prefixes_only: bool) -> Result<(), FieldError> {
    core_group(format!("{at}.group"), b.group.as_deref())?;
    if let Some(kind) = b.kind.as_deref().filter(|k| *k != "Service") {
        return Err(err(format!("{at}.kind"), format!("{kind:?}: only Service backends are supported")));
    }
    rules::dns1035_label(&b.name).map_err(|m| err(format!("{at}.name"), m))?;
    if let Some(ns) = &b.namespace {
        rules::dns_label(ns).map_err(|m| err(format!("{at}.namespace"), m))?;
    }
    if b.port.is_none() {
        return Err(err(format!("{at}.port"), "required for a Service backend, as Gateway API requires"));
    }
    port(format!("{at}.port"), b.port)?;
    if let Some(w) = b.weight
        && !(0..=MAX_WEIGHT).contains(&w)
    {
        return Err(err(format!("{at}.weight"), format!("{w}: must be 0-{MAX_WEIGHT}")));
    }
    filters(&format!("{at}.filters"), &b.filters, prefixes_only)
}
