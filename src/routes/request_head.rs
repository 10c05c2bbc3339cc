//! Socket.IO requests get a request head of their own.
//!
//! hyper parses headers without copying: the URI and every header value are slices of the
//! connection's 8–16 KiB read buffer. engineioxide keeps a socket's request head
//! (`req_parts()`) for as long as the socket lives, so, unchanged, every connection would keep
//! that whole buffer alive (half of an idle connection's memory, in BENCHMARKS.md's profile).
//! Copying the few bytes of the head lets the buffer go. Extensions (hyper's upgrade handle,
//! the peer address) are moved, not copied.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::Response;

pub async fn own_request_head(request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/socket.io") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let mut owned = Request::new(body);
    *owned.method_mut() = parts.method;
    *owned.version_mut() = parts.version;
    *owned.uri_mut() = parts.uri.to_string().parse::<Uri>().unwrap_or(parts.uri);
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.append(name.clone(), value);
        }
    }
    *owned.headers_mut() = headers;
    *owned.extensions_mut() = parts.extensions;
    next.run(owned).await
}
