//! Blob garbage collection against a real controller: a deleted app's package leaves the
//! blobstore, a live app's stays. Each test once on SQLite and once on PostgreSQL.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{zip_of, Controller, Db};

fn blob_path(cc: &Controller, sha256: &str) -> PathBuf {
    cc.data_dir.join("blobs").join(&sha256[..2]).join(sha256)
}

async fn unreferenced_blobs_are_collected_and_referenced_ones_stay(db: Db) {
    let cc = Controller::start_with(db, |c| {
        c.blob_gc_interval_secs = 1;
        // The grace period is what keeps a blob just written, not yet in the database, from
        // being collected: with none, a pass between the two would take a fresh upload.
        c.blob_gc_grace_secs = 2;
    })
    .await;
    let doomed = cc.app("doomed").await;
    let kept = cc.app("kept").await;
    let (_, p1) = cc
        .upload(&doomed, zip_of(&[("a.txt", "doomed bits")]))
        .await;
    let (_, p2) = cc.upload(&kept, zip_of(&[("a.txt", "kept bits")])).await;
    let (doomed_blob, kept_blob) = (
        blob_path(
            &cc,
            p1["data"]["checksum"]["value"].as_str().expect("sha256"),
        ),
        blob_path(
            &cc,
            p2["data"]["checksum"]["value"].as_str().expect("sha256"),
        ),
    );
    assert!(doomed_blob.exists() && kept_blob.exists());
    let (status, _) = cc
        .call(reqwest::Method::DELETE, &format!("/v3/apps/{doomed}"), None)
        .await;
    assert_eq!(status, 202);
    let mut gone = false;
    for _ in 0..200 {
        if !doomed_blob.exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the deleted app's package blob is still there");
    assert!(kept_blob.exists(), "a live app's package blob was removed");
    let (status, body) = cc
        .get(&format!(
            "/v3/packages/{}/download",
            p2["guid"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{body}");
}

both!(unreferenced_blobs_are_collected_and_referenced_ones_stay);
