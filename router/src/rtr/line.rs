//! Writing an RTR line: gorouter's access log line of one request, as the JSON of a
//! [`kiln_bus::cell::AppLogLine`], in one pass over bytes (no `fmt` but for IPv6 clients and
//! escaped control characters, no re-parsing of the head: a forwarded head comes with
//! [`Marks`] saying where its parts are). At 20 000
//! requests a second this runs 20 000 times a second, beside the requests.

use std::io::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderName, HeaderValue, HOST, REFERER, USER_AGENT};
use hyper::Version;

use super::{Record, Seen, RTR_SOURCE};
use crate::table::Endpoint;

/// Where the parts an RTR line tells are in a forwarded head, marked as it was written.
#[derive(Debug, Default, Clone)]
pub(crate) struct Marks {
    pub(crate) method: Range<usize>,
    /// The request target (path and query).
    pub(crate) target: Range<usize>,
    /// Header values (the first of each name).
    pub(crate) host: Option<Range<usize>>,
    pub(crate) referer: Option<Range<usize>>,
    pub(crate) user_agent: Option<Range<usize>>,
    pub(crate) forwarded_for: Option<Range<usize>>,
    pub(crate) forwarded_proto: Option<Range<usize>>,
    pub(crate) request_id: Option<Range<usize>>,
}

/// What a line tells of a request head.
struct Told<'a> {
    host: Option<&'a [u8]>,
    method: &'a [u8],
    path: &'a [u8],
    version: &'static str,
    referer: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
    forwarded_for: Option<&'a [u8]>,
    forwarded_proto: Option<&'a [u8]>,
    request_id: Option<&'a [u8]>,
}

impl Seen {
    fn told(&self) -> Told<'_> {
        match self {
            Seen::Parts {
                method,
                uri,
                version,
                headers,
            } => {
                let get = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
                Told {
                    // As hyper's path routes: a Host that is not plain text gives way to the
                    // request target's host.
                    host: headers
                        .get(HOST)
                        .filter(|h| h.to_str().is_ok())
                        .map(HeaderValue::as_bytes)
                        .or_else(|| uri.host().map(str::as_bytes)),
                    method: method.as_str().as_bytes(),
                    path: uri.path_and_query().map_or(b"/", |p| p.as_str().as_bytes()),
                    version: match *version {
                        Version::HTTP_09 => "HTTP/0.9",
                        Version::HTTP_10 => "HTTP/1.0",
                        Version::HTTP_2 => "HTTP/2.0",
                        Version::HTTP_3 => "HTTP/3.0",
                        _ => "HTTP/1.1",
                    },
                    referer: get(&REFERER),
                    user_agent: get(&USER_AGENT),
                    forwarded_for: get(&HeaderName::from_static("x-forwarded-for")),
                    forwarded_proto: get(&HeaderName::from_static("x-forwarded-proto")),
                    request_id: get(&crate::proxy::REQUEST_ID),
                }
            }
            Seen::Forwarded { head, marks } => {
                let at = |range: &Range<usize>| head.get(range.clone());
                let mark = |range: &Option<Range<usize>>| range.as_ref().and_then(at);
                Told {
                    host: mark(&marks.host),
                    method: at(&marks.method).unwrap_or(b"-"),
                    path: at(&marks.target).unwrap_or(b"/"),
                    version: "HTTP/1.1",
                    referer: mark(&marks.referer),
                    user_agent: mark(&marks.user_agent),
                    forwarded_for: mark(&marks.forwarded_for),
                    forwarded_proto: mark(&marks.forwarded_proto),
                    request_id: mark(&marks.request_id),
                }
            }
        }
    }
}

impl Record {
    /// Appends the line as the JSON of an [`AppLogLine`](kiln_bus::cell::AppLogLine), its
    /// message gorouter's access log line:
    /// `<host> - [<time>] "<METHOD> <path> HTTP/1.1" <status> <request bytes> <response bytes>
    /// "<referer>" "<user agent>" "<client>" "<backend>" x_forwarded_for:"…"
    /// x_forwarded_proto:"…" vcap_request_id:"…" response_time:<secs> app_id:"…"
    /// app_index:"…"`; absent values are `-`.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        let e = &self.endpoint;
        let request = self.request.told();
        out.extend_from_slice(b"{\"app_guid\":\"");
        json(out, e.app.as_bytes());
        out.extend_from_slice(b"\",\"source\":\"");
        out.extend_from_slice(RTR_SOURCE.as_bytes());
        out.extend_from_slice(b"\",\"stream\":\"OUT\",\"message\":\"");
        // The message, escaped for JSON as it goes: its own quotes are `\"`.
        value(out, request.host);
        out.extend_from_slice(b" - [");
        rfc3339(out, self.started);
        out.extend_from_slice(b"] \\\"");
        json(out, request.method);
        out.push(b' ');
        value(out, Some(request.path));
        out.push(b' ');
        out.extend_from_slice(request.version.as_bytes());
        out.extend_from_slice(b"\\\" ");
        number(out, self.status);
        out.push(b' ');
        number(out, self.request_bytes);
        out.push(b' ');
        number(out, self.response_bytes);
        field(out, " ", |out| value(out, request.referer));
        field(out, " ", |out| value(out, request.user_agent));
        field(out, " ", |out| client(out, self.client));
        field(out, " ", |out| backend(out, e));
        field(out, " x_forwarded_for:", |out| {
            value(out, request.forwarded_for)
        });
        field(out, " x_forwarded_proto:", |out| {
            value(out, request.forwarded_proto)
        });
        field(out, " vcap_request_id:", |out| {
            value(out, request.request_id)
        });
        out.extend_from_slice(b" response_time:");
        number(out, self.response_time.as_secs());
        out.push(b'.');
        padded(out, u64::from(self.response_time.subsec_micros()), 6);
        field(out, " app_id:", |out| value(out, Some(e.app.as_bytes())));
        field(out, " app_index:", |out| {
            value(out, Some(e.instance_index.as_bytes()))
        });
        out.extend_from_slice(b"\",\"timestamp_ns\":");
        let finished = self.started + self.response_time;
        let timestamp_ns = finished
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        number(out, timestamp_ns);
        out.push(b'}');
    }
}

/// A quote of the message, inside the JSON string.
const QUOTE: &[u8] = b"\\\"";

/// `label` and then what `part` writes, between the message's quotes.
fn field(out: &mut Vec<u8>, label: &str, part: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(QUOTE);
    part(out);
    out.extend_from_slice(QUOTE);
}

/// A value of the message (`-` when absent or empty): its quotes and backslashes escaped for
/// the message, and again for JSON; control characters are `?`; bytes that are not UTF-8 are
/// replaced.
fn value(out: &mut Vec<u8>, part: Option<&[u8]>) {
    let Some(part) = part.filter(|p| !p.is_empty()) else {
        out.push(b'-');
        return;
    };
    match std::str::from_utf8(part) {
        Ok(text) => quoted(out, text),
        Err(_) => quoted(out, &String::from_utf8_lossy(part)),
    }
}

fn quoted(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let (mut from, mut i) = (0, 0);
    while i < bytes.len() {
        let (len, with): (usize, &[u8]) = match bytes[i] {
            // `\"` in the message, `\\\"` in JSON; `\\` in the message, `\\\\` in JSON.
            b'"' => (1, b"\\\\\\\""),
            b'\\' => (1, b"\\\\\\\\"),
            0..=0x1f | 0x7f => (1, b"?"),
            // U+0080 to U+009F, the other control characters (`text` is UTF-8).
            0xc2 if matches!(bytes.get(i + 1), Some(0x80..=0x9f)) => (2, b"?"),
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[from..i]);
        out.extend_from_slice(with);
        i += len;
        from = i;
    }
    out.extend_from_slice(&bytes[from..]);
}

/// Text in a JSON string: quotes, backslashes and control characters escaped (bytes that are
/// not UTF-8 replaced).
fn json(out: &mut Vec<u8>, text: &[u8]) {
    let lossy = String::from_utf8_lossy(text);
    let bytes = lossy.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' || b == b'\\' || b < b' ' {
            out.extend_from_slice(&bytes[from..i]);
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                _ => {
                    let _ = write!(out, "\\u{:04x}", b);
                }
            }
            from = i + 1;
        }
    }
    out.extend_from_slice(&bytes[from..]);
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` in at least `width` digits, zeros in front.
fn padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits.as_bytes());
}

fn client(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                number(out, octet);
            }
            out.push(b':');
            number(out, v4.port());
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// An endpoint's `host:port` (IPv6 literals bracketed).
fn backend(out: &mut Vec<u8>, endpoint: &Endpoint) {
    let host = endpoint.host.as_str();
    let bracket = host.contains(':') && !host.starts_with('[');
    if bracket {
        out.push(b'[');
    }
    value(out, Some(host.as_bytes()));
    if bracket {
        out.push(b']');
    }
    out.push(b':');
    number(out, endpoint.port);
}

/// A time as RFC 3339 in UTC with milliseconds: `2026-11-23T10:04:05.123Z`.
fn rfc3339(out: &mut Vec<u8>, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or_default();
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    padded(out, u64::try_from(year).unwrap_or_default(), 4);
    for (before, n, width) in [
        (b'-', u64::from(month), 2),
        (b'-', u64::from(day), 2),
        (b'T', of_day / 3600, 2),
        (b':', of_day / 60 % 60, 2),
        (b':', of_day % 60, 2),
        (b'.', u64::from(since.subsec_millis()), 3),
    ] {
        out.push(before);
        padded(out, n, width);
    }
    out.push(b'Z');
}

/// Year, month and day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use kiln_bus::cell::AppLogLine;

    use super::*;
    use crate::rtr::{Arrival, Pending};

    fn time(at: SystemTime) -> String {
        let mut out = Vec::new();
        rfc3339(&mut out, at);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let at = |secs, ms| UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms);
        assert_eq!(time(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(at(951_827_696, 7)), "2000-02-29T12:34:56.007Z");
        assert_eq!(time(at(1_795_000_000, 999)), "2026-11-18T11:06:40.999Z");
    }

    fn endpoint(host: &str, app: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            host.into(),
            61001,
            app.into(),
            "inst".into(),
            "2".into(),
            BTreeMap::new(),
        ))
    }

    fn line(seen: Seen, endpoint: &Arc<Endpoint>, client: &str) -> AppLogLine {
        let arrival = Arrival {
            at: Instant::now(),
            wall: UNIX_EPOCH + Duration::from_millis(951_827_696_007),
        };
        let read = Arc::new(AtomicU64::new(12));
        let pending = Pending::new(
            seen,
            client.parse().unwrap(),
            endpoint,
            201,
            arrival,
            Some(read),
        );
        let mut record = pending.finish(345);
        record.response_time = Duration::from_micros(1500);
        let mut json = Vec::new();
        record.write_json(&mut json);
        kiln_bus::decode("test", &json).unwrap()
    }

    #[test]
    fn the_line_reads_like_gorouters() {
        let request = hyper::Request::builder()
            .method("POST")
            .uri("/api/x?y=1")
            .header("host", "app.example.com")
            .header("user-agent", "curl/8 \"quoted\" \\ \u{85}\t")
            .header("x-forwarded-for", "192.0.2.7, 127.0.0.1")
            .header("x-forwarded-proto", "http")
            .header(crate::proxy::REQUEST_ID, "req-1")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let line = line(
            Seen::take(parts),
            &endpoint("10.0.0.5", "app-guid"),
            "127.0.0.1:40000",
        );
        assert_eq!(
            line.message,
            "app.example.com - [2000-02-29T12:34:56.007Z] \"POST /api/x?y=1 HTTP/1.1\" 201 12 345 \
             \"-\" \"curl/8 \\\"quoted\\\" \\\\ ??\" \"127.0.0.1:40000\" \"10.0.0.5:61001\" \
             x_forwarded_for:\"192.0.2.7, 127.0.0.1\" x_forwarded_proto:\"http\" \
             vcap_request_id:\"req-1\" response_time:0.001500 app_id:\"app-guid\" app_index:\"2\""
        );
        assert_eq!(line.source, "RTR");
        assert_eq!(line.stream, "OUT");
        assert_eq!(line.app_guid, "app-guid");
        assert_eq!(line.timestamp_ns, 951_827_696_007_000_000_u128 + 1_500_000);
    }

    #[test]
    fn a_host_header_that_is_not_text_gives_way_to_the_targets_host() {
        let request = hyper::Request::builder()
            .uri("http://app.example.com/x")
            .header("host", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap())
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let line = line(Seen::take(parts), &endpoint("10.0.0.5", "a"), "127.0.0.1:1");
        assert!(
            line.message.starts_with("app.example.com - ["),
            "{}",
            line.message
        );
    }

    #[test]
    fn a_forwarded_head_is_read_at_its_marks() {
        let head = b"GET /a?b HTTP/1.1\r\nhost: h.example\r\nreferer: \xff\r\n".to_vec();
        let marks = Marks {
            method: 0..3,
            target: 4..8,
            host: Some(25..34),
            referer: Some(45..46),
            ..Marks::default()
        };
        let line = line(
            Seen::Forwarded { head, marks },
            &endpoint("fd00::1", "a\"pp"),
            "[fd00::2]:8080",
        );
        assert_eq!(line.app_guid, "a\"pp");
        assert_eq!(
            line.message,
            "h.example - [2000-02-29T12:34:56.007Z] \"GET /a?b HTTP/1.1\" 201 12 345 \
             \"\u{fffd}\" \"-\" \"[fd00::2]:8080\" \"[fd00::1]:61001\" \
             x_forwarded_for:\"-\" x_forwarded_proto:\"-\" \
             vcap_request_id:\"-\" response_time:0.001500 app_id:\"a\\\"pp\" app_index:\"2\""
        );
    }
}
