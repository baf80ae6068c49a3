//! Audit events: who did what to which resource, and when (CF's `audit.*` event types). A
//! failure to record one is logged and never fails the request that caused it.

use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::Value;

use crate::auth::User;
use crate::state::{new_guid, now, AppState};

/// Who acted: a user, or the platform itself (a stager's result, a cell's report).
pub enum Actor<'a> {
    /// A signed-in user.
    User(&'a User),
    /// The controller acting on what a component reported (`stager`, `cell`, …).
    System(&'a str),
}

/// The resource acted on.
pub struct Target<'a> {
    /// `app`, `route`, `buildpack`, …
    pub kind: &'a str,
    /// Its guid.
    pub guid: &'a str,
    /// Its name.
    pub name: &'a str,
}

/// Records event `kind` (`audit.app.create`, …) by `actor` on `target` in `space_guid`.
pub async fn record(
    s: &AppState,
    kind: &str,
    actor: Actor<'_>,
    target: Target<'_>,
    space_guid: Option<&str>,
    data: Value,
) {
    let (actor_guid, actor_type, actor_name) = match actor {
        Actor::User(u) => (u.guid.as_str(), "user", u.name.as_str()),
        Actor::System(component) => (component, "system", component),
    };
    let inserted = sqlx::query(
        "INSERT INTO audit_events (guid, type, actor_guid, actor_type, actor_name, target_guid, target_type, target_name, space_guid, data, seq, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(new_guid())
    .bind(kind)
    .bind(actor_guid)
    .bind(actor_type)
    .bind(actor_name)
    .bind(target.guid)
    .bind(target.kind)
    .bind(target.name)
    .bind(space_guid)
    .bind(data.to_string())
    .bind(next_seq())
    .bind(now())
    .execute(&s.db)
    .await;
    if let Err(e) = inserted {
        tracing::error!(error = %e, event = kind, target = target.guid, "recording an audit event");
    }
}

/// The order of events: microseconds since the epoch, strictly increasing in this process
/// (timestamps have whole seconds, and several events happen within one).
fn next_seq() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = chrono::Utc::now().timestamp_micros();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// An app as an event target.
pub fn app<'a>(guid: &'a str, name: &'a str) -> Target<'a> {
    Target {
        kind: "app",
        guid,
        name,
    }
}
