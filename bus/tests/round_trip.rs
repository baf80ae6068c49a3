//! `round_trip` on a real nats-server: a subscription made before it sees a message another
//! connection publishes right after, every time.

use std::time::Duration;

use futures::StreamExt;

#[tokio::test]
async fn a_subscription_is_in_place_once_the_round_trip_returns() {
    let nats = kiln_testkit::Nats::start();
    let listener = async_nats::connect(&nats.url).await.expect("connect");
    let sender = async_nats::connect(&nats.url).await.expect("connect");
    for i in 0..200 {
        let subject = format!("kiln.test.round-trip.{i}");
        let mut sub = listener
            .subscribe(subject.clone())
            .await
            .expect("subscribe");
        kiln_bus::round_trip(&listener, kiln_bus::ROUND_TRIP_TIMEOUT)
            .await
            .expect("round trip");
        sender
            .publish(subject, "command".into())
            .await
            .expect("publish");
        sender.flush().await.expect("flush");
        let got = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
        assert!(
            matches!(got, Ok(Some(_))),
            "message {i} published after the round trip was lost"
        );
    }
}

#[tokio::test]
async fn a_round_trip_on_a_closed_connection_fails() {
    let nats = kiln_testkit::Nats::start();
    let client = async_nats::connect(&nats.url).await.expect("connect");
    drop(nats);
    let err = kiln_bus::round_trip(&client, Duration::from_millis(500))
        .await
        .expect_err("no server to echo");
    assert!(!err.to_string().is_empty());
}
