//! What every handler shares: the database, the blobstore, the token key, the bus.

use std::sync::Arc;

use crate::db::Db;

use crate::auth::TokenKey;
use crate::blobstore::LocalBlobstore;
use crate::config::Config;

/// Shared state of the API.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Packages, droplets, caches.
    pub blobs: LocalBlobstore,
    /// Signs and checks user tokens.
    pub tokens: TokenKey,
    /// The credential of stagers and cells for the internal endpoints.
    pub internal_token: Arc<str>,
    /// The bus.
    pub nats: async_nats::Client,
    /// The configuration.
    pub config: Arc<Config>,
    /// The base URL the API is reached at (for links).
    pub base_url: Arc<str>,
    /// The base URL of the internal endpoints (for stagers).
    pub internal_url: Arc<str>,
    /// The guid of the shared default domain.
    pub default_domain_guid: Arc<str>,
    /// Recent and live app log lines.
    pub logs: Arc<crate::logs::Logs>,
    /// The cells and the instances they run.
    pub cells: Arc<crate::cells::Cells>,
}

/// Now, as the API writes timestamps (RFC 3339, UTC, seconds).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A new resource guid.
pub fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string()
}
