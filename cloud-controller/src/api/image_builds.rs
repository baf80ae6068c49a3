//! Builds of `docker` packages (`kiln push --docker-image`): no stager runs. The package's
//! image is one of the image store (by name, digest or guid), or a reference into a
//! configured registry (`host[:port]/repo:tag` or `@sha256:...`) pulled into the store first;
//! either way it becomes the build's droplet, an image droplet that cells run on its own
//! filesystem. A store image stages at once; a pull runs in the background with the build
//! STAGING (its `stager_id` is [`PULLER`]) and fails with the registry's answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::apps::AppRow;
use super::builds::BuildRow;
use super::images::{self, ImageRow};
use super::packages::PackageRow;
use crate::auth::User;
use crate::blobstore::Blobstore;
use crate::config::RegistryAccess;
use crate::error::{ApiError, ApiResult};
use crate::image_process;
use crate::state::{new_guid, now, AppState};

/// What a build being pulled by the controller has as its stager.
pub const PULLER: &str = "cloud-controller";

/// Stages docker package `package` of `app`: the build (STAGED at once for a store image,
/// STAGING while a registry pull runs).
pub(crate) async fn create(
    s: &AppState,
    user: &User,
    package: &PackageRow,
    app: &AppRow,
) -> ApiResult<String> {
    let reference = package.image.clone().unwrap_or_default();
    let in_store = images::resolve(s, &reference).await;
    let registry = registry_for(&s.config.registries, &reference).cloned();
    let image = match (in_store, registry) {
        (Ok(image), _) => Some(image),
        (Err(_), Some(_)) => None,
        (Err(e), None) => {
            let hint = if s.config.registries.is_empty() {
                "no registry is configured (the controller's --registry)".to_string()
            } else {
                let hosts: Vec<&str> = s
                    .config
                    .registries
                    .iter()
                    .map(|r| r.host.as_str())
                    .collect();
                format!("pulls are allowed from {} only", hosts.join(", "))
            };
            let why = match e {
                ApiError::Unprocessable(m) => m,
                other => other.to_string(),
            };
            return Err(ApiError::Unprocessable(format!("{why}; {hint}")));
        }
    };
    let (guid, t) = (new_guid(), now());
    sqlx::query(
        "INSERT INTO builds (guid, app_guid, package_guid, state, error, stack, buildpacks, droplet_guid, stager_id, created_by, created_at, updated_at) VALUES ($1, $2, $3, 'STAGING', NULL, $4, '[]', NULL, $5, $6, $7, $8)",
    )
    .bind(&guid)
    .bind(&app.guid)
    .bind(&package.guid)
    .bind(kiln_bus::DOCKER_STACK)
    .bind(PULLER)
    .bind(&user.guid)
    .bind(&t)
    .bind(&t)
    .execute(&s.db)
    .await?;
    let build = super::builds::find(s, &guid).await?;
    match image {
        Some(image) => staged(s, &build, &image)
            .await
            .map_err(|e| ApiError::internal("staging an image", e))?,
        None => {
            let (s, registry) = (
                s.clone(),
                registry_for(&s.config.registries, &reference).cloned(),
            );
            tokio::spawn(async move {
                let Some(registry) = registry else { return };
                let outcome = match pull(&s, &reference, &registry).await {
                    Ok(image) => staged(&s, &build, &image).await,
                    Err(why) => Err(why),
                };
                if let Err(why) = outcome {
                    tracing::warn!(build = %build.guid, %reference, error = %why, "image pull failed");
                    let _ = fail(&s, &build.guid, &format!("pulling {reference}: {why}")).await;
                }
            });
        }
    }
    Ok(guid)
}

/// The configured registry `reference` points into: its first component when that is a host
/// (it has a `.` or `:`, or is `localhost`).
fn registry_for<'a>(
    registries: &'a [RegistryAccess],
    reference: &str,
) -> Option<&'a RegistryAccess> {
    let (host, _) = reference.split_once('/')?;
    let is_host = host.contains('.') || host.contains(':') || host == "localhost";
    if !is_host {
        return None;
    }
    registries.iter().find(|r| r.host == host)
}

/// Makes `image` the droplet of `build`, and the build STAGED.
async fn staged(s: &AppState, build: &BuildRow, image: &ImageRow) -> Result<(), String> {
    let config: Value = serde_json::from_str(&image.config).unwrap_or_default();
    let command = image_process::display(&config);
    let process_types = if command.is_empty() {
        json!({})
    } else {
        json!({ "web": command })
    };
    let (droplet, t) = (new_guid(), now());
    let digest = image.digest.clone().unwrap_or_default();
    let db = |e: sqlx::Error| format!("recording the droplet: {e}");
    let mut tx = s.db.begin().await.map_err(db)?;
    sqlx::query(
        "INSERT INTO droplets (guid, app_guid, build_guid, package_guid, state, sha256, size, detected_buildpack, buildpacks, process_types, start_command, stack, error, created_at, updated_at, image_digest)
         VALUES ($1, $2, $3, $4, 'STAGED', $5, $6, NULL, '[]', $7, $8, $9, NULL, $10, $11, $12)",
    )
    .bind(&droplet)
    .bind(&build.app_guid)
    .bind(&build.guid)
    .bind(&build.package_guid)
    .bind(&image.sha256)
    .bind(image.size)
    .bind(process_types.to_string())
    .bind(&command)
    .bind(kiln_bus::DOCKER_STACK)
    .bind(&t)
    .bind(&t)
    .bind(&digest)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let updated = sqlx::query("UPDATE builds SET state = 'STAGED', droplet_guid = $1, updated_at = $2 WHERE guid = $3 AND state = 'STAGING'")
        .bind(&droplet)
        .bind(&t)
        .bind(&build.guid)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    if updated.rows_affected() != 1 {
        // Failed meanwhile (past the time limit): it gets no droplet.
        tx.rollback().await.map_err(db)?;
        return Err("the build is no longer STAGING".to_string());
    }
    tx.commit().await.map_err(db)?;
    let app = super::apps::find(s, &build.app_guid).await;
    if let Ok(app) = app {
        crate::audit::record(
            s,
            "audit.app.droplet.create",
            crate::audit::Actor::System("cloud-controller"),
            crate::audit::app(&app.guid, &app.name),
            Some(&app.space_guid),
            json!({"droplet_guid": droplet, "build_guid": build.guid, "image": digest}),
        )
        .await;
    }
    Ok(())
}

async fn fail(s: &AppState, build: &str, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE builds SET state = 'FAILED', error = $1, updated_at = $2 WHERE guid = $3 AND state = 'STAGING'")
        .bind(reason)
        .bind(now())
        .bind(build)
        .execute(&s.db)
        .await?;
    Ok(())
}

/// Pulls `reference` from `registry` into the image store, within the staging time limit.
/// The scratch dir goes whatever happens (one of a controller stopped meanwhile goes at its
/// next start).
async fn pull(
    s: &AppState,
    reference: &str,
    registry: &RegistryAccess,
) -> Result<ImageRow, String> {
    let scratch = s
        .config
        .data_dir
        .join("tmp")
        .join(format!("pull-{}", new_guid()));
    let limit = Duration::from_secs(s.config.staging_timeout_secs);
    let result = tokio::time::timeout(limit, pull_into(s, reference, registry, &scratch))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the pull did not finish within {} s",
                limit.as_secs()
            ))
        });
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    result
}

async fn pull_into(
    s: &AppState,
    reference: &str,
    registry: &RegistryAccess,
    scratch: &Path,
) -> Result<ImageRow, String> {
    let options = kiln_registry::PullOptions {
        auth: match &registry.credentials {
            Some((username, password)) => kiln_registry::Auth::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            None => kiln_registry::Auth::Anonymous,
        },
        allow_http: registry.allow_http,
        ..Default::default()
    };
    let layout = scratch.join("layout");
    let pulled = kiln_registry::pull_to_layout(reference, &layout, &options)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(%reference, digest = %pulled.manifest_digest, "image pulled");
    let archive = scratch.join("image.tar");
    let (dir, file) = (layout.clone(), archive.clone());
    tokio::task::spawn_blocking(move || tar_layout(&dir, &file))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("archiving the pulled image: {e}"))?;
    let file = tokio::fs::File::open(&archive)
        .await
        .map_err(|e| format!("reading the pulled image: {e}"))?;
    let blob = s
        .blobs
        .put(tokio_util::io::ReaderStream::new(file), u64::MAX)
        .await
        .map_err(|e| format!("storing the pulled image: {e}"))?;
    let (image, _) = images::register(s, &blob.sha256, blob.size, None)
        .await
        .map_err(|e| match e {
            ApiError::Internal(m) | ApiError::Unprocessable(m) => m,
            other => other.to_string(),
        })?;
    Ok(image)
}

/// The layout `dir` as a tar with `oci-layout`, `index.json` and `blobs/` at its top.
fn tar_layout(dir: &Path, archive: &PathBuf) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(std::fs::File::create(archive)?);
    tar.follow_symlinks(false);
    for name in ["oci-layout", "index.json"] {
        tar.append_path_with_name(dir.join(name), name)?;
    }
    tar.append_dir_all("blobs", dir.join("blobs"))?;
    tar.into_inner()?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_references_into_a_configured_registry_are_pulled() {
        let registries = vec!["http://127.0.0.1:5000".parse::<RegistryAccess>().unwrap()];
        assert!(registry_for(&registries, "127.0.0.1:5000/app:1").is_some());
        assert!(registry_for(&registries, "127.0.0.1:5001/app:1").is_none());
        assert!(
            registry_for(&registries, "library/app:1").is_none(),
            "not a host"
        );
        assert!(registry_for(&registries, "app").is_none());
    }

    #[test]
    fn registry_settings_parse_with_scheme_and_credentials() {
        let r: RegistryAccess = "https://me:secret@registry.example.com".parse().unwrap();
        assert!(!r.allow_http);
        assert_eq!(r.host, "registry.example.com");
        assert_eq!(r.credentials, Some(("me".into(), "secret".into())));
        assert!(!format!("{r:?}").contains("secret"));
        let r: RegistryAccess = "localhost:5000".parse().unwrap();
        assert!(!r.allow_http && r.credentials.is_none());
        assert!("ftp://x".parse::<RegistryAccess>().is_err());
        assert!("http://a b".parse::<RegistryAccess>().is_err());
    }
}
