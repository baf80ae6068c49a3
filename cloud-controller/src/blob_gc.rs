//! Blob garbage collection: every so often, blobs no record refers to any more (packages,
//! droplets and build caches of deleted apps, images, replaced caches and buildpacks, bits merged
//! with the resource pool) are removed from the blobstore, once older than a grace period.
//! The resource pool (`blobs/resources/`) is a cache of its own and is left alone.

use std::collections::HashSet;
use std::time::Duration;

use crate::blobstore::Collected;
use crate::state::AppState;

/// Every table column that refers to a blob by sha256.
const REFERENCES: &[&str] = &[
    "SELECT sha256 FROM packages WHERE sha256 IS NOT NULL",
    "SELECT sha256 FROM droplets WHERE sha256 IS NOT NULL",
    "SELECT sha256 FROM app_caches",
    "SELECT sha256 FROM buildpacks WHERE sha256 IS NOT NULL",
    "SELECT sha256 FROM images",
];

/// The sha256 of every blob a record refers to.
pub async fn referenced(s: &AppState) -> Result<HashSet<String>, sqlx::Error> {
    let mut keep = HashSet::new();
    for sql in REFERENCES {
        let rows: Vec<(String,)> = sqlx::query_as(*sql).fetch_all(&s.db).await?;
        keep.extend(rows.into_iter().map(|(sha,)| sha));
    }
    Ok(keep)
}

/// Forgets the images nobody names or uses any more: unnamed (image droplets, pushed archives,
/// pulls), no droplet runs them, no stack points at them, unchanged for `grace`. Their blobs
/// go with the collection that follows.
pub async fn forget_unused_images(s: &AppState, grace: Duration) -> Result<u64, sqlx::Error> {
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let cutoff = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let forgotten = sqlx::query(
        "DELETE FROM images WHERE name IS NULL AND state = 'READY' AND updated_at < $1
           AND digest NOT IN (SELECT image_digest FROM droplets WHERE image_digest IS NOT NULL)
           AND digest NOT IN (SELECT image_digest FROM stacks WHERE image_digest IS NOT NULL)",
    )
    .bind(cutoff)
    .execute(&s.db)
    .await?;
    Ok(forgotten.rows_affected())
}

/// One collection: unused images forgotten, then the references, then the files (a blob
/// stored after the query is younger than the grace period and stays).
pub async fn collect(s: &AppState, grace: Duration) -> Result<Collected, String> {
    let images = forget_unused_images(s, grace)
        .await
        .map_err(|e| e.to_string())?;
    if images > 0 {
        tracing::info!(images, "forgot unused unnamed images");
    }
    let keep = referenced(s).await.map_err(|e| e.to_string())?;
    let blobs = s.blobs.clone();
    tokio::task::spawn_blocking(move || blobs.collect_garbage(&keep, grace))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Collects every `interval`, forever.
pub async fn run(s: AppState, interval: Duration, grace: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match collect(&s, grace).await {
            Ok(c) if c.blobs > 0 => {
                tracing::info!(
                    blobs = c.blobs,
                    bytes = c.bytes,
                    "removed unreferenced blobs"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "blob garbage collection"),
        }
    }
}
