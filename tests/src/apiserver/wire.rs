//! The double's side of the wire: one request read and answered (LIST as JSON, WATCH as a
//! chunked stream of events, 410 and 404 as `Status` objects), as the real API server does.

use super::*;

pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn respond(stream: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body)?;
    let reason = match code {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        _ => "Error",
    };
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()
}

fn chunk(stream: &mut TcpStream, line: &Value) -> std::io::Result<()> {
    let mut data = serde_json::to_vec(line)?;
    data.push(b'\n');
    write!(stream, "{:x}\r\n", data.len())?;
    stream.write_all(&data)?;
    stream.write_all(b"\r\n")?;
    stream.flush()
}

pub(super) fn handle(
    shared: &Shared,
    stop: &std::sync::atomic::AtomicBool,
    mut stream: TcpStream,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    std::io::Read::read_exact(&mut reader, &mut body)?;
    let request = request.trim_end().to_owned();
    let mut parts = request.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query: BTreeMap<&str, &str> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
    let mut state = shared.lock();
    state.requests.push(request.clone());
    if let Some(answer) = ca_requests::route(method, path) {
        drop(state);
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (code, reply) = ca_requests::answer(shared, answer, &body);
        return respond(&mut stream, code, &reply);
    }
    if method != "GET" {
        drop(state);
        return respond(&mut stream, 405, &status(405, "MethodNotAllowed", "read-only double"));
    }
    let resource = KNOWN.iter().map(|(v, k, _)| resource_of(v, k)).find(|r| r.path == path);
    let Some(resource) = resource.filter(|r| !state.absent.contains(&r.path)) else {
        drop(state);
        return respond(
            &mut stream,
            404,
            &status(404, "NotFound", "the server could not find the requested resource"),
        );
    };
    if query.get("watch").is_some_and(|w| *w == "true" || *w == "1") {
        let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| *b == "true");
        state.watching += 1;
        drop(state);
        let result = watch(shared, stop, &mut stream, &resource, from, bookmarks);
        shared.lock().watching -= 1;
        return result;
    }
    // As the real API server encodes built-in kinds' lists: items without kind and apiVersion
    // (custom resources' items keep theirs).
    let items: Vec<Value> = state
        .objects
        .get(&resource.path)
        .map(|c| {
            c.values()
                .cloned()
                .map(|mut item| {
                    if resource.api_version == "v1"
                        && let Value::Object(map) = &mut item
                    {
                        map.remove("kind");
                        map.remove("apiVersion");
                    }
                    item
                })
                .collect()
        })
        .unwrap_or_default();
    let rv = state.rv;
    drop(state);
    let list = json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version,
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    });
    respond(&mut stream, 200, &list)
}

fn watch(
    shared: &Shared,
    stop: &std::sync::atomic::AtomicBool,
    stream: &mut TcpStream,
    resource: &Resource,
    from: u64,
    bookmarks: bool,
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    let gone = || {
        json!({"type": "ERROR", "object": status(410, "Expired",
            &format!("too old resource version: {from}"))})
    };
    let mut state = shared.lock();
    if from < state.compacted {
        drop(state);
        chunk(stream, &gone())?;
        return stream.write_all(b"0\r\n\r\n");
    }
    let epoch = state.epoch;
    let mut seen = from;
    let mut bookmarked = false;
    loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return stream.shutdown(Shutdown::Both);
        }
        if state.epoch != epoch {
            if state.gone_epoch == state.epoch {
                drop(state);
                chunk(stream, &gone())?;
                return stream.write_all(b"0\r\n\r\n");
            }
            drop(state);
            // Dropped mid-stream: no terminating chunk.
            return stream.shutdown(Shutdown::Both);
        }
        let pending: Vec<Event> =
            state.events.iter().filter(|e| e.rv > seen && e.path == resource.path).cloned().collect();
        let rv = state.rv;
        drop(state);
        for event in pending {
            seen = event.rv;
            chunk(stream, &json!({"type": event.kind, "object": event.object}))?;
        }
        if bookmarks && !bookmarked {
            bookmarked = true;
            let api_version = &resource.api_version;
            chunk(
                stream,
                &json!({"type": "BOOKMARK", "object": {"kind": resource.kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": rv.max(seen).to_string()}}}),
            )?;
        }
        state = shared.lock();
        if state.epoch == epoch && !state.events.iter().any(|e| e.rv > seen && e.path == resource.path) {
            state = shared
                .wake
                .wait_timeout(state, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
