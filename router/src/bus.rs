//! The router on NATS: one subscription to `router.*` (so registers and unregisters are
//! applied in the order they were sent), `router.start` at start and after every reconnect,
//! answers to `router.greet`, and the pruning loop, which pauses while the bus is down.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_nats::{Client, Event, Message, Subscriber};
use futures::StreamExt;
use kiln_bus::router::{
    RegistryMessage, ROUTER_ALL, ROUTER_GREET, ROUTER_REGISTER, ROUTER_START, ROUTER_UNREGISTER,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::StartError;
use crate::metrics::bump;
use crate::Shared;

/// A connected, subscribed bus, not yet serving.
pub(crate) struct Bus {
    client: Client,
    messages: Subscriber,
    events: mpsc::UnboundedReceiver<Event>,
}

/// Connects, subscribes and says hello.
pub(crate) async fn connect(shared: &Shared) -> Result<Bus, StartError> {
    let url = shared.config.nats_url.clone();
    let (tx, events) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .name(format!("kiln-router {}", shared.id))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                // The receiver only goes away when the router stops.
                let _ = tx.send(event);
            }
        })
        .connect(url.as_str())
        .await
        .map_err(|source| StartError::Connect { url, source })?;
    let messages = client
        .subscribe(ROUTER_ALL)
        .await
        .map_err(|source| StartError::Subscribe {
            subject: ROUTER_ALL.into(),
            source,
        })?;
    // The subscription is in place before anyone is told to register.
    kiln_bus::round_trip(&client, kiln_bus::ROUND_TRIP_TIMEOUT)
        .await
        .map_err(StartError::RoundTrip)?;
    shared.metrics.bus_connected.store(true, Ordering::Relaxed);
    say_hello(&client, shared).await;
    Ok(Bus {
        client,
        messages,
        events,
    })
}

/// Applies bus messages until `stop`.
pub(crate) async fn serve(bus: Bus, shared: Arc<Shared>, stop: CancellationToken) {
    let Bus {
        client,
        mut messages,
        mut events,
    } = bus;
    let mut events_open = true;
    let mut lost = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            message = messages.next() => match message {
                Some(message) => handle(&client, &shared, message).await,
                None => {
                    warn!("the router subscription ended");
                    break;
                }
            },
            event = events.recv(), if events_open => match event {
                Some(Event::Disconnected) => {
                    shared.metrics.bus_connected.store(false, Ordering::Relaxed);
                    lost = true;
                    warn!(event = "bus.disconnected", "lost NATS; keeping the route table");
                }
                Some(Event::Connected) => {
                    if lost && !shared.config.prune_on_bus_outage {
                        // Registrars get a whole threshold to register again.
                        shared.table.freshen(Instant::now());
                    }
                    shared.metrics.bus_connected.store(true, Ordering::Relaxed);
                    if lost {
                        lost = false;
                        bump(&shared.metrics.bus_reconnects);
                        info!(event = "bus.reconnected", "NATS is back");
                        say_hello(&client, &shared).await;
                    }
                }
                Some(other) => debug!(event = %other, "NATS event"),
                None => events_open = false,
            },
        }
    }
}

async fn say_hello(client: &Client, shared: &Shared) {
    let body = kiln_bus::encode(&shared.greeting);
    match client.publish(ROUTER_START, body.into()).await {
        Ok(()) => info!(event = "router.start", id = %shared.id, "said hello on the bus"),
        Err(e) => warn!(error = %e, "publishing router.start"),
    }
}

async fn handle(client: &Client, shared: &Shared, message: Message) {
    let subject = message.subject.as_str();
    match subject {
        ROUTER_REGISTER | ROUTER_UNREGISTER => {
            let m = match kiln_bus::decode::<RegistryMessage>(subject, &message.payload) {
                Ok(m) if !m.host.is_empty() && m.port != 0 => m,
                Ok(_) => {
                    bump(&shared.metrics.bad_messages);
                    warn!(subject, "registry message without host or port");
                    return;
                }
                Err(e) => {
                    bump(&shared.metrics.bad_messages);
                    warn!(error = %e, "ignoring a bus message");
                    return;
                }
            };
            if subject == ROUTER_REGISTER {
                let n = shared.table.register(&m, Instant::now());
                bump(&shared.metrics.registrations);
                debug!(host = %m.host, port = m.port, uris = n, app = %m.app, "registered");
            } else {
                let n = shared.table.unregister(&m);
                bump(&shared.metrics.unregistrations);
                debug!(host = %m.host, port = m.port, removed = n, "unregistered");
            }
        }
        ROUTER_GREET => {
            if let Some(reply) = message.reply {
                let body = kiln_bus::encode(&shared.greeting);
                if let Err(e) = client.publish(reply, body.into()).await {
                    warn!(error = %e, "answering router.greet");
                }
            }
        }
        _ => {}
    }
}

/// Prunes stale endpoints (and closes idle endpoint connections that timed out or were
/// closed) every `prune_interval` until `stop`. Unless `prune_on_bus_outage`,
/// a disconnected bus pauses pruning (and its return counts every endpoint as fresh).
pub(crate) async fn prune(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.prune_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut paused = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let idle = shared.table.sweep_idle(Instant::now());
        debug!(idle, "swept idle endpoint connections");
        let connected = shared.metrics.bus_connected.load(Ordering::Relaxed);
        if !connected && !shared.config.prune_on_bus_outage {
            if !paused {
                info!(event = "prune.paused", "bus down: not pruning");
            }
            paused = true;
            continue;
        }
        if paused {
            paused = false;
            info!(event = "prune.resumed", "bus back: pruning again");
        }
        let pruned = shared.table.prune(Instant::now());
        if pruned > 0 {
            shared
                .metrics
                .pruned
                .fetch_add(pruned as u64, Ordering::Relaxed);
            info!(event = "prune", pruned, "pruned stale endpoints");
        }
    }
}
