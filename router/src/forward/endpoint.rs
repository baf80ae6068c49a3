//! Connections to endpoints on the forwarding path: a TCP stream and what was read from it
//! but not yet passed on. A request's head (and small body) is written whole, then the
//! response head is read; the proxy passes the body on from [`EndpointConn::buf`] and
//! [`EndpointConn::read_more`]. Kept alive in the endpoint's pool between requests.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::head::{parse_response, Answer, Response};
use crate::table::Endpoint;
use crate::upstream::{connect, DialError, Kept, Pooled};

/// Bytes read from an endpoint at a time (at most).
pub(crate) const READ_SIZE: usize = 16 << 10;

/// One connection to an endpoint.
#[derive(Debug)]
pub(crate) struct EndpointConn {
    stream: TcpStream,
    /// Read from the endpoint, not yet passed on.
    pub(crate) buf: BytesMut,
    /// Its life in the pool.
    pub(crate) kept: Kept,
}

/// Why an exchange on a connection got no response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("sending the request: {0}")]
    Send(#[source] io::Error),
    #[error("the endpoint closed the connection without answering")]
    Closed,
    #[error("reading the response: {0}")]
    Receive(#[source] io::Error),
    #[error("the endpoint sent {0}")]
    Bad(&'static str),
}

impl ExchangeError {
    /// Nothing of a response arrived (the request may be sent again on a new connection if
    /// it is idempotent).
    pub(crate) fn unanswered(&self) -> bool {
        !matches!(self, ExchangeError::Bad(_))
    }
}

impl EndpointConn {
    /// Connects to `endpoint` within `timeout`.
    pub(crate) async fn dial(endpoint: &Endpoint, timeout: Duration) -> Result<Self, DialError> {
        Ok(EndpointConn {
            stream: connect(endpoint, timeout).await?,
            buf: BytesMut::with_capacity(READ_SIZE),
            kept: Kept::new(),
        })
    }

    /// Sends `request` (head and body) and reads until the response head (passing over
    /// informational ones); the head's bytes stay at the start of [`Self::buf`].
    pub(crate) async fn round_trip(
        &mut self,
        request: &[u8],
        head_only: bool,
    ) -> Result<Answer, ExchangeError> {
        self.buf.clear();
        self.stream
            .write_all(request)
            .await
            .map_err(ExchangeError::Send)?;
        loop {
            if !self.buf.is_empty() {
                match parse_response(&self.buf, head_only) {
                    Response::Final(answer) => return Ok(answer),
                    Response::Informational(len) => {
                        self.buf.advance(len);
                        continue;
                    }
                    Response::Bad(what) => return Err(ExchangeError::Bad(what)),
                    Response::Partial => {}
                }
            }
            match self.read_more().await {
                Ok(0) if self.buf.is_empty() => return Err(ExchangeError::Closed),
                Ok(0) => return Err(ExchangeError::Bad("a cut-off response head")),
                Ok(_) => {}
                Err(e) => return Err(ExchangeError::Receive(e)),
            }
        }
    }

    /// Reads what the endpoint sends next into [`Self::buf`]; 0 when it closed.
    pub(crate) async fn read_more(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_SIZE);
        self.stream.read_buf(&mut self.buf).await
    }
}

impl Pooled for EndpointConn {
    fn settle(&mut self) -> bool {
        // Readable while idle: the endpoint closed it (or sent what nobody asked for).
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn ended(&self) -> bool {
        !self.buf.is_empty()
    }

    fn kept(&mut self) -> &mut Kept {
        &mut self.kept
    }
}
