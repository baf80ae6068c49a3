//! Bodies in both directions, streamed frame by frame. A request body can be offered to
//! another endpoint only while no attempt has started reading it ([`BodySource`]); a
//! response body drives the endpoint connection it comes from and keeps its request counted
//! as in flight until it is done, then says how many bytes it sent ([`Streamed`]). Both count
//! their bytes for the RTR line.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::upstream::Upstream;

type Slot = Arc<Mutex<Option<Incoming>>>;

/// The client's request body, waiting for the attempt that will send it.
#[derive(Debug)]
pub(crate) struct BodySource {
    slot: Slot,
    empty: bool,
    hint: SizeHint,
    /// Bytes read from the client, when someone wants to know (and the body is not empty).
    read: Option<Arc<AtomicU64>>,
}

impl BodySource {
    /// Waits for an attempt to take `body`; `count` keeps a count of the bytes read.
    pub(crate) fn new(body: Incoming, count: bool) -> BodySource {
        let empty = body.is_end_stream();
        BodySource {
            empty,
            hint: body.size_hint(),
            slot: Arc::new(Mutex::new(Some(body))),
            read: (count && !empty).then(Arc::default),
        }
    }

    /// The body for one attempt; it takes the client's body on its first read.
    pub(crate) fn attempt(&self) -> AttemptBody {
        AttemptBody {
            slot: (!self.empty).then(|| self.slot.clone()),
            body: None,
            hint: self.hint,
            read: self.read.clone(),
        }
    }

    /// The count of bytes read from the client, if kept.
    pub(crate) fn bytes_read(&self) -> Option<Arc<AtomicU64>> {
        self.read.clone()
    }

    /// Whether another attempt can still send the whole body (nothing of it was read).
    pub(crate) fn replayable(&self) -> bool {
        self.empty
            || self
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
    }
}

/// The request body of one attempt.
#[derive(Debug)]
pub(crate) struct AttemptBody {
    /// Where the client's body waits, until the first read; `None` for an empty body.
    slot: Option<Slot>,
    body: Option<Incoming>,
    hint: SizeHint,
    read: Option<Arc<AtomicU64>>,
}

/// An attempt found the body gone: an earlier attempt read from it.
#[derive(Debug, thiserror::Error)]
#[error("the request body was already (partly) sent to another endpoint")]
pub(crate) struct BodyGone;

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(slot) = self.slot.take() {
            self.body = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            if self.body.is_none() {
                // Never send a truncated body as if it were whole.
                return Poll::Ready(Some(Err(BodyGone.into())));
            }
        }
        let polled = match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            None => return Poll::Ready(None),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(read)) = (&polled, &self.read) {
            if let Some(data) = frame.data_ref() {
                read.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => self.slot.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => self.hint,
        }
    }
}

/// What a [`Streamed`] body holds until it is done.
pub(crate) trait OnEnd {
    /// The body is done (or was dropped) after `sent` bytes; `clean` is the endpoint
    /// connection when the body reached its end without error (so it may serve again).
    fn ended(&mut self, sent: u64, clean: Option<Upstream>);
}

/// The endpoint's response body on its way to the client. It drives the endpoint connection
/// it comes from (in the client connection's task), counts its bytes, and when it is done or
/// dropped hands its hold the connection (if the body ended cleanly) and the byte count.
#[derive(Debug)]
pub(crate) struct Streamed<H: OnEnd> {
    body: Incoming,
    upstream: Option<Upstream>,
    hold: H,
    sent: u64,
    ended: bool,
}

impl<H: OnEnd> Streamed<H> {
    pub(crate) fn new(body: Incoming, upstream: Upstream, hold: H) -> Streamed<H> {
        Streamed {
            body,
            upstream: Some(upstream),
            hold,
            sent: 0,
            ended: false,
        }
    }
}

impl<H: OnEnd> Drop for Streamed<H> {
    fn drop(&mut self) {
        let clean = (self.ended || self.body.is_end_stream())
            .then(|| self.upstream.take())
            .flatten();
        self.hold.ended(self.sent, clean);
    }
}

impl<H: OnEnd + Unpin> Body for Streamed<H> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(upstream) = this.upstream.as_mut() {
            // Reads from the endpoint into the body's channel (and finishes the request body).
            let _ = upstream.poll_conn(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                this.ended = this.body.is_end_stream();
            }
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Err(_))) => this.upstream = None,
            Poll::Pending => {}
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
