//! Socket.IO requests get a request head of their own, before routing.
//!
//! hyper parses headers without copying: the URI and every header value are slices of the
//! connection's 8–16 KiB read buffer. engineioxide keeps a socket's request head
//! (`req_parts()`) for as long as the socket lives, so, unchanged, every connection would keep
//! that whole buffer alive (half of an idle connection's memory, in BENCHMARKS.md's profile).
//! Copying the few bytes of the URI and header values lets the buffer go. Method, version and
//! extensions (hyper's upgrade handle, the peer address) are moved, not copied.
//!
//! The copy must be made before the request reaches axum's `Router`, which is why
//! `run_until_stopped` wraps the whole router in this middleware instead of adding it with
//! `Router::layer`: the router stores a clone of the URI in the extensions (`OriginalUri`)
//! before any of its layers run, and that clone alone keeps the buffer alive.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::Response;

pub async fn own_request_head(request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/socket.io") {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    if let Ok(uri) = parts.uri.to_string().parse::<Uri>() {
        parts.uri = uri;
    }
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.append(name.clone(), value);
        }
    }
    parts.headers = headers;
    next.run(Request::from_parts(parts, body)).await
}
