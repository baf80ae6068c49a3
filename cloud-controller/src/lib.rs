//! The cloud controller: the platform's front door (a Cloud Foundry V3-shaped API with
//! authentication) and its memory (SQLite database, content-addressed blobstore), staging
//! builds through stagers on the NATS bus.

pub mod api;
pub mod auth;
pub mod blobstore;
pub mod config;
pub mod db;
pub mod error;
pub mod logs;
pub mod package_check;
pub mod staging;
pub mod state;

use std::sync::Arc;

use anyhow::Context;
use rand::RngCore;

pub use config::Config;
use state::AppState;

/// A started controller: where it listens and its admin password on first start.
pub struct Started {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    /// The admin password, only on the first start (also in `<data>/admin-password`).
    pub admin_password: Option<String>,
    /// The server; completes when it stops.
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The internal credential in `<data>/internal-token`, made on first start (mode 0600).
pub fn internal_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("internal-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if t.trim().len() >= 32 {
            return Ok(t.trim().to_string());
        }
    }
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = hex::encode(raw);
    auth::write_private(&path, token.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// Opens the database and blobstore, connects to the bus, binds, and serves in the background.
pub async fn start(config: Config) -> anyhow::Result<Started> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let db = db::open(&config.data_dir)
        .await
        .context("opening the database")?;
    let default_domain = api::routes::ensure_default_domain(&db, &config.default_domain)
        .await
        .context("the default domain")?;
    let admin_password = auth::ensure_admin(&db, &config.data_dir)
        .await
        .context("creating the admin user")?;
    let blobs = blobstore::LocalBlobstore::open(config.data_dir.join("blobs"))?;
    // A restart loses nothing: an upload in progress when the controller stopped is FAILED.
    blobs.sweep_partials()?;
    sqlx::query("UPDATE packages SET state = 'FAILED', error = 'the controller restarted during the upload: upload again', updated_at = ? WHERE state = 'PROCESSING_UPLOAD'")
        .bind(state::now())
        .execute(&db)
        .await?;
    let tokens = auth::TokenKey::load_or_create(&config.data_dir.join("token-key"))
        .context("the token key")?;
    let internal = internal_token(&config.data_dir)?;
    let nats = async_nats::connect(&config.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", config.nats_url))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let base_url: Arc<str> = format!("http://{addr}").into();
    let internal_url: Arc<str> = config
        .internal_url
        .clone()
        .map_or(base_url.clone(), Into::into);
    let state = AppState {
        db,
        blobs,
        tokens,
        internal_token: internal.into(),
        nats,
        config: Arc::new(config),
        base_url,
        internal_url,
        default_domain_guid: default_domain.into(),
        logs: Arc::default(),
    };
    let bus = tokio::spawn(staging::run(state.clone()));
    let (logs, nats) = (state.logs.clone(), state.nats.clone());
    let log_feed = tokio::spawn(async move { logs.follow_staging(nats).await });
    let app = api::router(state);
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, app).await;
        bus.abort();
        log_feed.abort();
        served.context("serving the API")
    });
    Ok(Started {
        addr,
        admin_password,
        server,
    })
}
