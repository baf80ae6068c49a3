//! Which buildpacks a build stages with, as [`kiln_bus::BuildpackRef`]s for the staging
//! request: the usable buildpacks are the enabled, READY ones of the build's stack or of no
//! stack, and of two with one name the one of the stack wins. Named buildpacks must each be
//! one of them (else the build is refused, naming the usable ones); with none named, all of
//! them are detection candidates in position order.

use std::collections::BTreeMap;

use kiln_bus::BuildpackRef;

use super::store::{BuildpackRow, COLUMNS};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The usable buildpacks on `stack`, one per name, in position order.
async fn usable(s: &AppState, stack: &str) -> ApiResult<Vec<BuildpackRow>> {
    let rows: Vec<BuildpackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM buildpacks WHERE enabled = 1 AND state = 'READY' AND (stack = $1 OR stack IS NULL) ORDER BY position, guid"
    )))
    .bind(stack)
    .fetch_all(&s.db)
    .await?;
    let specific: Vec<String> = rows
        .iter()
        .filter(|r| r.stack.is_some())
        .map(|r| r.name.clone())
        .collect();
    Ok(rows
        .into_iter()
        .filter(|r| r.stack.is_some() || !specific.contains(&r.name))
        .collect())
}

fn reference(s: &AppState, row: &BuildpackRow) -> BuildpackRef {
    match (&row.sha256, row.builtin) {
        (Some(sha), 0) => BuildpackRef {
            name: row.name.clone(),
            sha256: Some(sha.clone()),
            url: Some(format!(
                "{}/internal/v1/buildpacks/{}/bits",
                s.internal_url, row.guid
            )),
        },
        _ => BuildpackRef {
            name: row.name.clone(),
            sha256: None,
            url: None,
        },
    }
}

/// The references of a build on `stack` naming `names` (none: detection), or a 422.
pub async fn refs_for(s: &AppState, names: &[String], stack: &str) -> ApiResult<Vec<BuildpackRef>> {
    let usable = usable(s, stack).await?;
    let available = || {
        let names: Vec<&str> = usable.iter().map(|r| r.name.as_str()).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    if names.is_empty() {
        if usable.is_empty() {
            return Err(ApiError::Unprocessable(format!(
                "No buildpack is enabled and ready for stack '{stack}': enable or upload one (GET /v3/buildpacks)"
            )));
        }
        return Ok(usable.iter().map(|r| reference(s, r)).collect());
    }
    let by_name: BTreeMap<&str, &BuildpackRow> =
        usable.iter().map(|r| (r.name.as_str(), r)).collect();
    let unknown: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !by_name.contains_key(n))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "Buildpack '{}' must be an enabled, ready admin buildpack for stack '{stack}'. Available: {}",
            unknown.join("', '"),
            available()
        )));
    }
    Ok(names
        .iter()
        .filter_map(|n| by_name.get(n.as_str()))
        .map(|r| reference(s, r))
        .collect())
}
