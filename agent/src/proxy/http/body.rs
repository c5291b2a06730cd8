//! Bodies as the HTTP stage moves them: one boxed type for every body it sends either way,
//! counted as they stream (the flow's bytes, Istio's request and response sizes), and the
//! response's end reported once (its size, its gRPC status, whether it completed) so the
//! request's metrics are taken when it is over.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt as _, Empty, Full, combinators::UnsyncBoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// An endpoint's (or the client's) body as the proxy passes it on.
pub fn boxed(body: hyper::body::Incoming) -> Body {
    body.map_err(Into::into).boxed_unsync()
}

/// `body`, its data bytes handed to `count` as they pass.
pub fn counted<B>(body: B, count: impl Fn(u64) + Send + 'static) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    Counted { inner: body, count: Box::new(count) }.boxed_unsync()
}

struct Counted<B> {
    inner: B,
    count: Box<dyn Fn(u64) + Send>,
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            (self.count)(data.map_or(0, |d| d.len() as u64));
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a response body ended.
#[derive(Clone, Debug, Default)]
pub struct Ended {
    pub bytes: u64,
    /// `grpc-status` from the trailers (or from the headers, set before the body).
    pub grpc_status: Option<u32>,
    /// It reached its end; false when the client went away or the upstream failed midway.
    pub complete: bool,
}

/// A response body that reports how it ended to `on_end`, exactly once (at its end, or
/// when dropped before it).
pub fn metered(body: Body, grpc_status: Option<u32>, on_end: impl FnOnce(Ended) + Send + 'static) -> Body {
    Metered { inner: body, ended: Ended { grpc_status, ..Ended::default() }, on_end: Some(Box::new(on_end)) }
        .boxed_unsync()
}

type OnEnd = Box<dyn FnOnce(Ended) + Send>;

struct Metered {
    inner: Body,
    ended: Ended,
    on_end: Option<OnEnd>,
}

impl Metered {
    fn end(&mut self, complete: bool) {
        if let Some(on_end) = self.on_end.take() {
            self.ended.complete = complete;
            on_end(std::mem::take(&mut self.ended));
        }
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.ended.bytes += data.len() as u64;
                } else if let Some(status) = frame.trailers_ref().and_then(grpc_status) {
                    self.ended.grpc_status = Some(status);
                }
                if self.inner.is_end_stream() {
                    self.end(true);
                }
            }
            Some(Err(_)) => self.end(false),
            None => self.end(true),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.end(complete);
    }
}

/// The `grpc-status` in `headers`, when there is one.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Reads the whole body when it says it is at most `limit` bytes long (a `content-length`,
/// or no body at all), so that it can be sent again on a retry; `Err` gives back a body to
/// stream once, unread.
pub async fn buffer_within(body: Body, limit: u64) -> Result<Result<Bytes, BoxError>, Body> {
    if body.is_end_stream() {
        return Ok(Ok(Bytes::new()));
    }
    match body.size_hint().upper() {
        Some(upper) if upper <= limit => {}
        _ => return Err(body),
    }
    Ok(body.collect().await.map(|collected| collected.to_bytes()))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn a_metered_body_reports_its_size_and_grpc_status_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::trailers(trailers)),
        ]))
        .boxed_unsync();
        let body = metered(inner, None, move |e| sink.lock().expect("lock").push(e));
        let collected = body.collect().await.expect("body");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"));
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].bytes, seen[0].grpc_status, seen[0].complete), (5, Some(14), true));
    }

    #[tokio::test]
    async fn a_body_dropped_early_is_reported_incomplete() {
        let seen = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&seen);
        let inner = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >())
        .boxed_unsync();
        drop(metered(inner, Some(0), move |e| *sink.lock().expect("lock") = Some(e)));
        let ended = seen.lock().expect("lock").clone().expect("reported");
        assert!(!ended.complete);
        assert_eq!(ended.grpc_status, Some(0));
    }

    #[tokio::test]
    async fn only_a_body_of_known_small_size_is_buffered() {
        let small = full(Bytes::from_static(b"abc"));
        assert_eq!(
            buffer_within(small, 64).await.ok().and_then(Result::ok),
            Some(Bytes::from_static(b"abc"))
        );
        assert!(buffer_within(full(Bytes::from(vec![0; 100])), 64).await.is_err());
        assert!(buffer_within(empty(), 0).await.is_ok());
        let unknown = http_body_util::StreamBody::new(futures_util::stream::iter([Ok::<_, BoxError>(
            Frame::data(Bytes::from_static(b"x")),
        )]))
        .boxed_unsync();
        assert!(buffer_within(unknown, 64).await.is_err(), "no length: streamed, not buffered");
    }
}
