//! Protocol upgrades (WebSockets): once the endpoint answered `101 Switching Protocols` and
//! the router passed that on, both connections are handed over and bytes are copied both
//! ways until either side closes, or the drain is cut.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{debug, Instrument};

use crate::metrics::{bump, drop_one};
use crate::server::Drain;
use crate::table::Lease;
use crate::Shared;

/// Counts an open tunnel until dropped.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        drop_one(&self.0.metrics.tunnels);
    }
}

/// Joins the client's and the endpoint's connections once both are upgraded.
pub(crate) fn tunnel(
    shared: Arc<Shared>,
    drain: &Drain,
    client: OnUpgrade,
    endpoint: OnUpgrade,
    lease: Lease,
) {
    let cut = drain.cut.clone();
    let task = async move {
        bump(&shared.metrics.tunnels);
        let _open = Open(shared);
        let _lease = lease;
        let (client, endpoint) = match tokio::try_join!(client, endpoint) {
            Ok(both) => both,
            Err(e) => {
                debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut endpoint = TokioIo::new(endpoint);
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut endpoint) => match copied {
                Ok((up, down)) => debug!(up, down, "tunnel closed"),
                Err(e) => debug!(error = %e, "tunnel ended"),
            },
            () = cut.cancelled() => debug!("tunnel cut by the drain"),
        }
    };
    drain.tracker.spawn(task.in_current_span());
}
