//! The cloud controller: the platform's front door (a Cloud Foundry V3-shaped API with
//! authentication) and its memory (SQLite database, content-addressed blobstore), staging
//! builds through stagers on the NATS bus.

pub mod api;
pub mod audit;
pub mod auth;
pub mod blob_gc;
pub mod blobstore;
pub mod cells;
pub mod config;
pub mod db;
pub mod error;
pub mod image_process;
pub mod logs;
pub mod package_check;
pub mod staging;
pub mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

pub use config::Config;
use state::AppState;

/// A started controller: where it listens and its admin password on first start.
pub struct Started {
    /// The bound address.
    pub addr: SocketAddr,
    /// The admin password, only on the first start (also in `<data>/admin-password`).
    pub admin_password: Option<String>,
    /// The server; completes when it stops.
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Why the controller could not start; each names what to check.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file or directory of the data dir.
    #[error("{path}: {source} (is the data dir writable by this user?)")]
    DataDir {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The database.
    #[error(transparent)]
    Database(#[from] db::DbError),
    /// A first-start query.
    #[error("preparing the database: {0}")]
    Query(#[from] sqlx::Error),
    /// The admin user could not be made.
    #[error("creating the admin user: {0}")]
    Admin(String),
    /// The blobstore.
    #[error("the blobstore: {0}")]
    Blobstore(#[from] blobstore::BlobError),
    /// The bus.
    #[error("connecting to NATS at {url}: {source} (is nats-server running there?)")]
    Nats {
        /// The NATS URL.
        url: String,
        /// The error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The listen address.
    #[error("listening on {addr}: {source} (is another process using it?)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn data_err(path: &Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

/// The internal credential in `<data>/internal-token`, made on first start (mode 0600).
pub fn internal_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("internal-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if t.trim().len() >= 32 {
            return Ok(t.trim().to_string());
        }
    }
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = hex::encode(raw);
    auth::write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// Opens the database and blobstore, connects to the bus, binds, and serves in the background.
pub async fn start(config: Config) -> Result<Started, StartError> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(data_err(&data_dir))?;
    // Scratch of image checks and pulls an earlier run was stopped in the middle of.
    let _ = std::fs::remove_dir_all(data_dir.join("tmp"));
    let db = db::open(config.database_url.as_deref(), &data_dir).await?;
    let default_domain = api::routes::ensure_default_domain(&db, &config.default_domain).await?;
    api::stacks::ensure_configured(&db, &config.stacks).await?;
    api::buildpacks::seed(&db, &config.builtin_buildpacks).await?;
    let admin_password = auth::ensure_admin(&db, &data_dir)
        .await
        .map_err(|e| StartError::Admin(e.to_string()))?;
    let blobs = blobstore::LocalBlobstore::open(data_dir.join("blobs"))?;
    // A restart loses nothing: an upload in progress when the controller stopped is FAILED.
    blobs.sweep_partials()?;
    sqlx::query("UPDATE packages SET state = 'FAILED', error = 'the controller restarted during the upload: upload again', updated_at = $1 WHERE state = 'PROCESSING_UPLOAD'")
        .bind(state::now())
        .execute(&db)
        .await?;
    let key_path = data_dir.join("token-key");
    let tokens = auth::TokenKey::load_or_create(&key_path).map_err(data_err(&key_path))?;
    let internal = internal_token(&data_dir).map_err(data_err(&data_dir))?;
    let nats = async_nats::connect(&config.nats_url)
        .await
        .map_err(|source| StartError::Nats {
            url: config.nats_url.clone(),
            source,
        })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let base_url: Arc<str> = config
        .external_url
        .as_deref()
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("http://{addr}"))
        .into();
    let internal_url: Arc<str> = config
        .internal_url
        .clone()
        .map_or_else(|| format!("http://{addr}").into(), Into::into);
    let cell_ttl = config.cell_ttl_ms.map(std::time::Duration::from_millis);
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
        cells: {
            let cells = crate::cells::Cells::default();
            cells.lock().cell_ttl = cell_ttl;
            Arc::new(cells)
        },
    };
    let bus = tokio::spawn(staging::run(state.clone()));
    let follow_cells = tokio::spawn(cells::follow(state.clone()));
    let settle = Duration::from_millis(state.config.converge_settle_ms);
    let converge = tokio::spawn(cells::converge::run(state.clone(), settle));
    let gc = tokio::spawn(blob_gc::run(
        state.clone(),
        Duration::from_secs(state.config.blob_gc_interval_secs.max(1)),
        Duration::from_secs(state.config.blob_gc_grace_secs),
    ));
    let (logs, nats) = (state.logs.clone(), state.nats.clone());
    let log_feed = tokio::spawn(async move { logs.follow_staging(nats).await });
    let app = api::router(state);
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, app).await;
        bus.abort();
        log_feed.abort();
        gc.abort();
        follow_cells.abort();
        converge.abort();
        served
    });
    Ok(Started {
        addr,
        admin_password,
        server,
    })
}
