//! Platform configuration for operators (Kiln extension, in the spirit of Stackato's `kato
//! config get/set`): today the keys `stack.<name>.image`, the image of the image store that
//! stagings and instances of a stack run on instead of each machine's own copy of it.
//!
//! Setting one records the image and wakes convergence: new stagings use it at once, and the
//! running instances of the stack's apps are replaced by a rolling restart (their process
//! version includes the image, and an instance of an older version is stopped only once its
//! successor is RUNNING). Droplets are not rebuilt. The rollout's progress is part of the
//! key's JSON. `GET /v3/admin/config`, `GET|PUT /v3/admin/config/:key` (`{"value": IMAGE}`).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiJson;
use crate::audit::{self, Actor, Target};
use crate::auth::User;
use crate::cells::desired;
use crate::error::{ApiError, ApiResult};
use crate::state::{now, AppState};

/// A stack's image setting.
#[derive(sqlx::FromRow)]
struct StackImage {
    guid: String,
    name: String,
    image_digest: Option<String>,
    image_since: Option<String>,
}

/// The stack a key names (`stack.<name>.image`).
fn stack_of(key: &str) -> Option<&str> {
    key.strip_prefix("stack.")?
        .strip_suffix(".image")
        .filter(|n| !n.is_empty())
}

async fn stacks(s: &AppState) -> ApiResult<Vec<StackImage>> {
    Ok(
        sqlx::query_as("SELECT guid, name, image_digest, image_since FROM stacks ORDER BY name")
            .fetch_all(&s.db)
            .await?,
    )
}

/// The stack a key names, or a 404 listing the keys there are.
async fn find(s: &AppState, key: &str) -> ApiResult<StackImage> {
    let all = stacks(s).await?;
    let keys = || {
        all.iter()
            .map(|st| format!("stack.{}.image", st.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match stack_of(key) {
        Some(name) => match all.iter().position(|st| st.name == name) {
            Some(i) => Ok(all.into_iter().nth(i).expect("found")),
            None => Err(ApiError::Unprocessable(format!(
                "Unknown config key `{key}`: there is no stack `{name}` (the keys are {})",
                keys()
            ))),
        },
        None => Err(ApiError::Unprocessable(format!(
            "Unknown config key `{key}`: the keys are {}",
            keys()
        ))),
    }
}

/// How far the instances of a stack's apps are on its current setting: `instances` wanted,
/// `updated` RUNNING on it, `outdated` still on an earlier one (STARTING or RUNNING).
pub(crate) async fn rollout(s: &AppState, stack: &str) -> ApiResult<Value> {
    let desired = desired::load(&s.db).await?;
    let versions: HashMap<&str, &str> = desired
        .values()
        .filter(|p| p.stack == stack)
        .map(|p| (p.guid.as_str(), p.version.as_str()))
        .collect();
    let wanted: u64 = desired
        .values()
        .filter(|p| p.stack == stack)
        .map(|p| u64::from(p.instances))
        .sum();
    let (mut updated, mut outdated) = (0u64, 0u64);
    {
        let inner = s.cells.lock();
        for k in inner.instances.values() {
            let Some(version) = versions.get(k.actual.process_guid.as_str()) else {
                continue;
            };
            match &k.version {
                Some(v) if v != version => outdated += 1,
                _ if k.actual.state == kiln_bus::cell::InstanceState::Running => updated += 1,
                _ => {}
            }
        }
    }
    Ok(json!({
        "instances": wanted,
        "updated": updated.min(wanted),
        "outdated": outdated,
        "done": outdated == 0 && updated >= wanted,
    }))
}

async fn key_json(s: &AppState, st: &StackImage) -> ApiResult<Value> {
    Ok(json!({
        "key": format!("stack.{}.image", st.name),
        "value": st.image_digest,
        "since": st.image_since,
        "description": match &st.image_digest {
            Some(_) => format!("the image stack {} runs on", st.name),
            None => format!("unset: each stager and cell runs its own copy of stack {}", st.name),
        },
        "rollout": rollout(s, &st.name).await?,
    }))
}

/// `GET /v3/admin/config`: every key.
pub async fn list(_: User, State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let mut resources = Vec::new();
    for st in stacks(&s).await? {
        resources.push(key_json(&s, &st).await?);
    }
    Ok(Json(json!({ "resources": resources })))
}

/// `GET /v3/admin/config/:key`.
pub async fn get(
    _: User,
    State(s): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<Value>> {
    let st = find(&s, &key).await?;
    Ok(Json(key_json(&s, &st).await?))
}

#[derive(Deserialize)]
pub struct SetBody {
    value: String,
}

/// `PUT /v3/admin/config/:key` with `{"value": IMAGE}` (a name, digest or digest prefix of
/// an image in the store): records it and starts the rolling restart; the same image again
/// changes nothing.
pub async fn set(
    user: User,
    State(s): State<AppState>,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<SetBody>,
) -> ApiResult<Json<Value>> {
    let st = find(&s, &key).await?;
    let image = super::images::resolve(&s, body.value.trim()).await?;
    let digest = image
        .digest
        .clone()
        .ok_or_else(|| ApiError::Unprocessable("The image is still being checked".into()))?;
    if st.image_digest.as_deref() != Some(digest.as_str()) {
        sqlx::query(
            "UPDATE stacks SET image_digest = $1, image_since = $2, updated_at = $2 WHERE guid = $3",
        )
        .bind(&digest)
        .bind(now())
        .bind(&st.guid)
        .execute(&s.db)
        .await?;
        tracing::info!(stack = %st.name, image = %digest, "stack image set; rolling restart");
        audit::record(
            &s,
            "audit.config.update",
            Actor::User(&user),
            Target {
                kind: "stack",
                guid: &st.guid,
                name: &st.name,
            },
            None,
            json!({"key": key, "value": digest, "previous": st.image_digest, "image_name": image.name}),
        )
        .await;
        s.cells.wake.notify_one();
    }
    let st = find(&s, &key).await?;
    Ok(Json(key_json(&s, &st).await?))
}
