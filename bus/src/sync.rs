//! Knowing the server has what a client sent: `async_nats::Client::flush` only writes the
//! client's buffer to the socket, so a command published by another connection right after a
//! component subscribed can still reach the server before the subscription does, and be lost.
//! (With one server, as Kiln runs NATS; in a NATS cluster the subscription also has to
//! propagate to the other servers.)

use std::time::Duration;

use futures::StreamExt;

/// How long [`round_trip`] waits for its message to come back by default.
pub const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a round trip to the server did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RoundTripError {
    #[error("subscribing to an inbox on the bus: {0}")]
    Subscribe(String),
    #[error("publishing to an inbox on the bus: {0}")]
    Publish(String),
    #[error("the bus did not echo a message within {0:?} (is the connection up?)")]
    Timeout(Duration),
    #[error("the connection to the bus closed before its echo came back")]
    Closed,
}

/// Returns once the server has processed everything `client` sent before, its subscriptions
/// included: a message to a fresh inbox the client listens on comes back only after the server
/// handled what came before it on the connection.
pub async fn round_trip(
    client: &async_nats::Client,
    timeout: Duration,
) -> Result<(), RoundTripError> {
    let echoed = async {
        let inbox = client.new_inbox();
        let mut echo = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| RoundTripError::Subscribe(e.to_string()))?;
        client
            .publish(inbox, bytes::Bytes::new())
            .await
            .map_err(|e| RoundTripError::Publish(e.to_string()))?;
        client
            .flush()
            .await
            .map_err(|e| RoundTripError::Publish(e.to_string()))?;
        echo.next().await.ok_or(RoundTripError::Closed)?;
        Ok(())
    };
    // A client without a server queues everything and waits: the whole trip is timed.
    tokio::time::timeout(timeout, echoed)
        .await
        .unwrap_or(Err(RoundTripError::Timeout(timeout)))
}
