//! Request and response heads on the forwarding path: a client's head is parsed in place and
//! copied to the endpoint with the router's edits (hop-by-hop headers out, the forwarding
//! headers of gorouter in); an endpoint's head is copied to the client the same way, and
//! says how its body is framed.
//!
//! A request the path does not take as it is (anything but a plain HTTP/1.1 request in
//! origin form with one `Host`, a known route and a small body of known length) is left to
//! hyper, which answers the odd ones (400, 404, 431) and serves upgrades, `Expect`, chunked
//! and large bodies.

use std::io::Write;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use httparse::{Header, Status};
use hyper::header::HeaderValue;

use super::framing::{Chunks, Framing};
use crate::proxy::new_request_id;
use crate::rtr::Marks;
use crate::table::{normalize_host, Endpoint, RouteKey};
use crate::Shared;

/// Headers parsed per request head, at most; a request with more is left to hyper (which
/// answers 431 over the configured count).
const MAX_HEADERS: usize = 128;

/// Headers parsed per response head, at most (hyper's client refuses more too).
const MAX_RESPONSE_HEADERS: usize = 100;

/// Request bodies up to this size are read whole before the request is sent (so that it can
/// be sent again to another endpoint); bigger ones are streamed by hyper.
pub(crate) const MAX_BUFFERED_BODY: usize = 64 << 10;

/// Response heads over this size are refused (502).
pub(crate) const MAX_RESPONSE_HEAD: usize = 1 << 20;

/// Hop-by-hop headers: never passed on (`Connection`'s own tokens are read first).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// What became of the bytes read from a client so far.
#[expect(
    clippy::large_enum_variant,
    reason = "made once per request and moved on at once; boxing the plan would cost an allocation"
)]
pub(crate) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request the forwarding path sends on.
    Request(Plan),
    /// A request for hyper to serve (or answer).
    Hyper,
}

/// A client's request, ready to go to an endpoint of its route.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The host it names (normalized) and its route.
    pub(crate) host: String,
    pub(crate) route: RouteKey,
    /// Bytes of the head and of the body in the client's buffer.
    pub(crate) head_len: usize,
    pub(crate) body_len: usize,
    /// The client asked to close the connection after this request.
    pub(crate) close: bool,
    /// GET, HEAD, OPTIONS or TRACE: may be sent again after a failure.
    pub(crate) idempotent: bool,
    /// A HEAD request: the response has no body whatever its headers say.
    pub(crate) head_only: bool,
    pub(crate) request_id: HeaderValue,
    /// The head for the endpoint, up to the endpoint's own headers (see [`finish_request`]).
    pub(crate) head: Vec<u8>,
    /// Where the RTR line's parts are in `head`.
    pub(crate) marks: Marks,
    /// Where the method and the request target are in the client's buffer.
    pub(crate) method: Range<usize>,
    pub(crate) target: Range<usize>,
}

impl Plan {
    /// The method, read from the client's buffer (`buf`, still holding the request).
    pub(crate) fn method<'b>(&self, buf: &'b [u8]) -> &'b str {
        let method = buf.get(self.method.clone()).unwrap_or_default();
        std::str::from_utf8(method).unwrap_or_default()
    }

    /// The request target's path (without the query), read from the client's buffer.
    pub(crate) fn path<'b>(&self, buf: &'b [u8]) -> &'b str {
        let target = buf.get(self.target.clone()).unwrap_or_default();
        let target = std::str::from_utf8(target).unwrap_or("/");
        target.split('?').next().unwrap_or(target)
    }
}

/// A `Content-Length` value: digits alone (no sign, no other spaces than around them), as
/// hyper reads it; anything else is no length.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn is(name: &str, wanted: &str) -> bool {
    name.eq_ignore_ascii_case(wanted)
}

/// Appends a header line; says where its value is in `out`.
fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> Range<usize> {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    let start = out.len();
    out.extend_from_slice(value);
    let end = out.len();
    out.extend_from_slice(b"\r\n");
    start..end
}

/// Parses the head at the start of `buf` (read from `client`) and, when it is one the
/// forwarding path takes, makes the endpoint's head of it.
pub(crate) fn parse_request(buf: &[u8], client: IpAddr, shared: &Shared) -> Parsed {
    let config = &shared.config;
    let mut headers = [const { MaybeUninit::<Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) if buf.len() <= config.max_header_bytes => return Parsed::Partial,
        _ => return Parsed::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::Hyper;
    };
    if head_len > config.max_header_bytes
        || request.headers.len() > config.max_header_count
        || !target.starts_with('/')
        || !target.is_ascii()
        || method == "CONNECT"
    {
        return Parsed::Hyper;
    }
    let mut host = None;
    let mut hosts = 0;
    let mut body_len = None;
    let mut close = false;
    for h in request.headers.iter() {
        let name = h.name;
        if is(name, "host") {
            hosts += 1;
            host = Some(h.value);
        } else if is(name, "content-length") {
            let len = content_length(h.value).and_then(|n| usize::try_from(n).ok());
            match (len, body_len) {
                (Some(len), None) => body_len = Some(len),
                (Some(len), Some(earlier)) if len == earlier => {}
                _ => return Parsed::Hyper,
            }
        } else if is(name, "transfer-encoding") || is(name, "upgrade") || is(name, "expect") {
            return Parsed::Hyper;
        } else if is(name, "connection") {
            let Ok(tokens) = std::str::from_utf8(h.value) else {
                return Parsed::Hyper;
            };
            for token in tokens.split(',').map(str::trim) {
                if is(token, "close") {
                    close = true;
                } else if !token.is_empty() && !is(token, "keep-alive") {
                    // It names headers to drop: hyper's path handles that.
                    return Parsed::Hyper;
                }
            }
        }
    }
    let body_len = body_len.unwrap_or(0);
    let host = match (hosts, host) {
        (1, Some(host)) => std::str::from_utf8(host).ok().and_then(normalize_host),
        _ => None,
    };
    let Some(host) = host.filter(|_| body_len <= MAX_BUFFERED_BODY) else {
        return Parsed::Hyper;
    };
    let path = target.split('?').next().unwrap_or(target);
    let Some(route) = shared.table.lookup(&host, path) else {
        // hyper's path answers 404 naming the host.
        return Parsed::Hyper;
    };

    // Both are parts of `buf`.
    let within = |part: &str| {
        let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
        start..start + part.len()
    };
    let mut head = Vec::with_capacity(head_len + 256);
    let mut marks = Marks {
        method: 0..method.len(),
        target: method.len() + 1..method.len() + 1 + target.len(),
        ..Marks::default()
    };
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for = Vec::new();
    let mut request_id = None;
    let mut has_start = false;
    for h in request.headers.iter() {
        let name = h.name;
        if HOP_BY_HOP.iter().any(|hop| is(name, hop)) {
            continue;
        }
        if is(name, "x-forwarded-for") {
            forwarded_for.extend_from_slice(h.value);
            forwarded_for.extend_from_slice(b", ");
            continue;
        }
        if is(name, "x-vcap-request-id") {
            if request_id.is_none() && !h.value.is_empty() {
                request_id = HeaderValue::from_bytes(h.value).ok();
            }
            continue;
        }
        if is(name, "x-cf-applicationid")
            || is(name, "x-cf-instanceid")
            || is(name, "x-cf-instanceindex")
        {
            // The endpoint's values replace them.
            continue;
        }
        has_start |= is(name, "x-request-start");
        let at = header_line(&mut head, name.as_bytes(), h.value);
        // What the RTR line tells: the first of each.
        let told = if is(name, "x-forwarded-proto") {
            &mut marks.forwarded_proto
        } else if is(name, "host") {
            &mut marks.host
        } else if is(name, "user-agent") {
            &mut marks.user_agent
        } else if is(name, "referer") {
            &mut marks.referer
        } else {
            continue;
        };
        told.get_or_insert(at);
    }
    let _ = write!(forwarded_for, "{client}");
    marks.forwarded_for = Some(header_line(&mut head, b"x-forwarded-for", &forwarded_for));
    if marks.forwarded_proto.is_none() {
        marks.forwarded_proto = Some(header_line(&mut head, b"x-forwarded-proto", b"http"));
    }
    let request_id = request_id.unwrap_or_else(new_request_id);
    marks.request_id = Some(header_line(
        &mut head,
        b"x-vcap-request-id",
        request_id.as_bytes(),
    ));
    if !has_start {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let _ = write!(head, "x-request-start: {ms}\r\n");
    }
    let idempotent = matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE");
    Parsed::Request(Plan {
        host,
        route,
        head_len,
        body_len,
        close,
        idempotent,
        head_only: method == "HEAD",
        request_id,
        head,
        marks,
        method: within(method),
        target: within(target),
    })
}

/// Ends `head` (a plan's, cut back to its own length) with `endpoint`'s headers and the blank
/// line.
pub(crate) fn finish_request(head: &mut Vec<u8>, endpoint: &Endpoint) {
    let prepared = &endpoint.prepared;
    for (name, value) in [
        (&b"x-cf-applicationid"[..], &prepared.app),
        (b"x-cf-instanceid", &prepared.instance_id),
        (b"x-cf-instanceindex", &prepared.instance_index),
    ] {
        if let Some(value) = value {
            header_line(head, name, value.as_bytes());
        }
    }
    head.extend_from_slice(b"\r\n");
}

/// What an endpoint's bytes so far hold.
pub(crate) enum Response {
    /// Not a whole head yet.
    Partial,
    /// An informational (1xx) head of this many bytes, passed over.
    Informational(usize),
    /// The response head.
    Final(Answer),
    /// Not a response the router can pass on.
    Bad(&'static str),
}

/// An endpoint's response head, made into the client's.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Bytes of the endpoint's head.
    pub(crate) len: usize,
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The endpoint keeps the connection open for another request.
    pub(crate) reusable: bool,
    /// The client's head, without its last blank line (`Connection: close` may follow).
    pub(crate) head: Vec<u8>,
}

/// Parses the response head at the start of `buf`, the answer to a request (`head_only`:
/// to a HEAD request).
pub(crate) fn parse_response(buf: &[u8], head_only: bool) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => return Response::Partial,
        Ok(Status::Partial) => return Response::Bad("a response head over 1 MiB"),
        Err(httparse::Error::TooManyHeaders) => return Response::Bad("too many response headers"),
        Err(_) => return Response::Bad("a malformed response head"),
    };
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Response::Bad("a malformed response head");
    };
    if status == 101 {
        return Response::Bad("switched protocols unasked");
    }
    if (100..200).contains(&status) {
        return Response::Informational(len);
    }
    let mut close = version == 0;
    let mut length = None;
    let mut chunked = None;
    let mut named = false;
    for h in response.headers.iter() {
        if is(h.name, "connection") {
            for token in std::str::from_utf8(h.value).unwrap_or_default().split(',') {
                let token = token.trim();
                if is(token, "close") {
                    close = true;
                } else if is(token, "keep-alive") {
                    close &= version != 0;
                } else if !token.is_empty() {
                    named = true;
                }
            }
        } else if is(h.name, "content-length") {
            match (content_length(h.value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(earlier)) if n == earlier => {}
                _ => return Response::Bad("an invalid Content-Length"),
            }
        } else if is(h.name, "transfer-encoding") {
            let last = std::str::from_utf8(h.value)
                .unwrap_or_default()
                .rsplit(',')
                .next()
                .unwrap_or_default();
            chunked = Some(is(last.trim(), "chunked"));
        }
    }
    let framing = if head_only || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked(Chunks::default()),
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    // Headers `Connection` names are hop-by-hop too.
    let tokens: Vec<&str> = if named {
        response
            .headers
            .iter()
            .filter(|h| is(h.name, "connection"))
            .flat_map(|h| std::str::from_utf8(h.value).unwrap_or_default().split(','))
            .map(str::trim)
            .collect()
    } else {
        Vec::new()
    };
    let mut head = Vec::with_capacity(len + 32);
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\n",
        response.reason.unwrap_or_default()
    );
    for h in response.headers.iter() {
        let name = h.name;
        if HOP_BY_HOP.iter().any(|hop| is(name, hop))
            || (chunked.is_some() && is(name, "content-length"))
            || (tokens.iter().any(|t| is(name, t))
                && !is(name, "content-length")
                && !is(name, "transfer-encoding"))
        {
            continue;
        }
        header_line(&mut head, name.as_bytes(), h.value);
    }
    Response::Final(Answer {
        len,
        status,
        // Both framings at once (or chunked from HTTP/1.0) is faulty framing: the body is
        // read as chunked, and the connection not trusted with another request.
        reusable: !close
            && framing != Framing::UntilClose
            && !(chunked.is_some() && (length.is_some() || version == 0)),
        framing,
        head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: &[u8], head_only: bool) -> Answer {
        match parse_response(bytes, head_only) {
            Response::Final(answer) => answer,
            _ => panic!("not a final response"),
        }
    }

    #[test]
    fn a_response_head_loses_its_hop_by_hop_headers_and_keeps_its_framing() {
        let a = answer(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nX-App: kept\r\n\r\n0\r\n\r\n",
            false,
        );
        let head = String::from_utf8(a.head).unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-App: kept\r\n"
        );
        assert_eq!(a.framing, Framing::Chunked(Chunks::default()));
        assert!(
            !a.reusable,
            "both framings: the connection is not trusted again"
        );
        assert_eq!(a.status, 200);
    }

    #[test]
    fn how_a_response_body_is_framed() {
        let framing = |head: &[u8], head_only| answer(head, head_only).framing;
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", false),
            Framing::Length(12)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", true),
            Framing::Empty
        );
        assert_eq!(
            framing(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Framing::Empty
        );
        let close = answer(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(close.framing, Framing::UntilClose);
        assert!(!close.reusable);
        assert!(!answer(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).reusable);
        assert!(
            !answer(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            )
            .reusable
        );
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Response::Bad(_)
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", false),
            Response::Informational(25)
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 101 Switching\r\n\r\n", false),
            Response::Bad(_)
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n", false),
            Response::Partial
        ));
    }
}
