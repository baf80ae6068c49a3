//! Bodies in both directions, streamed frame by frame. A request body can be offered to
//! another endpoint only while no attempt has started reading it ([`BodySource`]); a
//! response body keeps its request counted as in flight until it is done ([`Held`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

type Slot = Arc<Mutex<Option<Incoming>>>;

/// The client's request body, waiting for the attempt that will send it.
#[derive(Debug)]
pub(crate) struct BodySource {
    slot: Slot,
    empty: bool,
    hint: SizeHint,
}

impl BodySource {
    pub(crate) fn new(body: Incoming) -> BodySource {
        BodySource {
            empty: body.is_end_stream(),
            hint: body.size_hint(),
            slot: Arc::new(Mutex::new(Some(body))),
        }
    }

    /// The body for one attempt; it takes the client's body on its first read.
    pub(crate) fn attempt(&self) -> AttemptBody {
        AttemptBody {
            slot: (!self.empty).then(|| self.slot.clone()),
            body: None,
            hint: self.hint,
        }
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
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
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

/// A response body that holds something (the endpoint lease, the in-flight count) until
/// it ends or is dropped.
#[derive(Debug)]
pub(crate) struct Held<B, H> {
    body: B,
    _hold: H,
}

impl<B, H> Held<B, H> {
    pub(crate) fn new(body: B, hold: H) -> Held<B, H> {
        Held { body, _hold: hold }
    }
}

impl<B: Body + Unpin, H: Unpin> Body for Held<B, H> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
