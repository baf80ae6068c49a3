//! Where a response body ends, found without decoding it: the forwarding path passes an
//! endpoint's body to the client byte for byte (chunk sizes, extensions and trailers
//! included) and only needs to know how many of the bytes it reads belong to the body.

/// How a response body is delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (`HEAD`, `204`, `304`).
    Empty,
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunks),
    /// Neither: the body ends when the endpoint closes the connection.
    UntilClose,
}

/// A body that cannot be passed on: its chunked framing is broken.
#[derive(Debug, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub(crate) struct BadChunk(&'static str);

/// What of the bytes read next belongs to a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    /// Bytes of the body, framing included (to pass on).
    pub(crate) bytes: usize,
    /// Of those, the content (chunk data), as the access log counts it.
    pub(crate) content: usize,
    /// The body ended with them.
    pub(crate) done: bool,
}

impl Framing {
    /// Of `bytes` (what was read next), what belongs to the body.
    pub(crate) fn take(&mut self, bytes: &[u8]) -> Result<Taken, BadChunk> {
        let all = |n, done| Taken {
            bytes: n,
            content: n,
            done,
        };
        match self {
            Framing::Empty => Ok(all(0, true)),
            Framing::Length(left) => {
                let n = usize::try_from(*left).map_or(bytes.len(), |l| l.min(bytes.len()));
                *left -= n as u64;
                Ok(all(n, *left == 0))
            }
            Framing::Chunked(chunks) => chunks.scan(bytes),
            Framing::UntilClose => Ok(all(bytes.len(), false)),
        }
    }
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Chunks {
    /// At the start of a chunk-size line (`digits` hex digits read so far).
    #[default]
    Size,
    /// In a chunk-size line: its hex digits so far and their value.
    Digits(u8, u64),
    /// In the extensions of a chunk-size line (after `;`), up to its line end.
    Extension(u64),
    /// After the `\r` of a chunk-size line.
    SizeLf(u64),
    /// In chunk data: this many bytes left.
    Data(u64),
    /// Right after chunk data: its `\r\n` is next.
    DataCr,
    /// After the `\r` that ends chunk data.
    DataLf,
    /// At the start of a trailer line (or of the empty line that ends the body).
    TrailerStart,
    /// In a trailer field line.
    Trailer,
    /// After the `\r` of the empty line that ends the body.
    EndLf,
    /// The body ended.
    Done,
}

impl Chunks {
    /// Reads `bytes` on from where the body stands; says how many of them belong to the body
    /// (and how many of those are chunk data) and whether it ended.
    pub(crate) fn scan(&mut self, bytes: &[u8]) -> Result<Taken, BadChunk> {
        let mut i = 0;
        let mut content = 0;
        while i < bytes.len() && *self != Chunks::Done {
            let b = bytes[i];
            *self = match *self {
                Chunks::Data(left) => {
                    let n =
                        usize::try_from(left).map_or(bytes.len() - i, |l| l.min(bytes.len() - i));
                    i += n;
                    content += n;
                    let left = left - n as u64;
                    *self = if left == 0 {
                        Chunks::DataCr
                    } else {
                        Chunks::Data(left)
                    };
                    continue;
                }
                Chunks::Size => match hex(b) {
                    Some(d) => Chunks::Digits(1, u64::from(d)),
                    None => return Err(BadChunk("a chunk size is not hexadecimal")),
                },
                Chunks::Digits(n, size) => match (hex(b), b) {
                    (Some(_), _) if n >= 15 => return Err(BadChunk("a chunk size is too large")),
                    (Some(d), _) => Chunks::Digits(n + 1, size << 4 | u64::from(d)),
                    (None, b';' | b' ' | b'\t') => Chunks::Extension(size),
                    (None, b'\r') => Chunks::SizeLf(size),
                    (None, b'\n') => after_size(size),
                    (None, _) => return Err(BadChunk("a chunk size is not hexadecimal")),
                },
                Chunks::Extension(size) => match b {
                    b'\r' => Chunks::SizeLf(size),
                    b'\n' => after_size(size),
                    _ => Chunks::Extension(size),
                },
                Chunks::SizeLf(size) => match b {
                    b'\n' => after_size(size),
                    _ => return Err(BadChunk("a chunk-size line does not end in CRLF")),
                },
                Chunks::DataCr => match b {
                    b'\r' => Chunks::DataLf,
                    b'\n' => Chunks::Size,
                    _ => return Err(BadChunk("chunk data is longer than its size")),
                },
                Chunks::DataLf => match b {
                    b'\n' => Chunks::Size,
                    _ => return Err(BadChunk("chunk data does not end in CRLF")),
                },
                Chunks::TrailerStart => match b {
                    b'\r' => Chunks::EndLf,
                    b'\n' => Chunks::Done,
                    _ => Chunks::Trailer,
                },
                Chunks::Trailer => match b {
                    b'\n' => Chunks::TrailerStart,
                    _ => Chunks::Trailer,
                },
                Chunks::EndLf => match b {
                    b'\n' => Chunks::Done,
                    _ => return Err(BadChunk("the last chunk does not end in CRLF")),
                },
                Chunks::Done => Chunks::Done,
            };
            i += 1;
        }
        Ok(Taken {
            bytes: i,
            content,
            done: *self == Chunks::Done,
        })
    }
}

/// What follows a chunk-size line: its data, or the trailers after the last chunk.
fn after_size(size: u64) -> Chunks {
    if size == 0 {
        Chunks::TrailerStart
    } else {
        Chunks::Data(size)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"5;name=x\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nExpires: never\r\n\r\n";

    #[test]
    fn a_chunked_body_ends_after_its_trailers_whatever_the_reads() {
        for split in 1..BODY.len() {
            let mut chunks = Chunks::default();
            let mut taken = 0;
            let mut content = 0;
            let mut done = false;
            for part in BODY.chunks(split) {
                let t = chunks.scan(part).unwrap();
                taken += t.bytes;
                content += t.content;
                done = t.done;
                if t.done {
                    break;
                }
                assert_eq!(t.bytes, part.len(), "split {split}");
            }
            assert!(done, "split {split}");
            assert_eq!(taken, BODY.len(), "split {split}");
            assert_eq!(content, "hello0123456789abcdef".len(), "split {split}");
        }
    }

    #[test]
    fn bytes_after_the_body_are_not_taken() {
        let mut next = BODY.to_vec();
        next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut framing = Framing::Chunked(Chunks::default());
        let taken = framing.take(&next).unwrap();
        assert_eq!((taken.bytes, taken.done), (BODY.len(), true));
        let mut length = Framing::Length(4);
        let taken = length.take(b"abcdef").unwrap();
        assert_eq!((taken.bytes, taken.content, taken.done), (4, 4, true));
        let taken = Framing::Empty.take(b"abc").unwrap();
        assert_eq!((taken.bytes, taken.done), (0, true));
    }

    #[test]
    fn broken_chunks_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcd\r\n",
            b"1\rx",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(
                Chunks::default().scan(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
