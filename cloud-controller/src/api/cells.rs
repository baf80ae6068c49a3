//! Cells for operators (Kiln extensions of the V3 API, authenticated like the rest): the cells
//! the controller hears from, with their room and instances, and draining one. A drain asks
//! the cell over the bus (`kiln.cell.<id>.drain`) to evacuate: it advertises itself
//! evacuating, convergence starts its instances on other cells and stops each on the drained
//! cell once its replacement is RUNNING, and the cell exits when it has none left.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use kiln_bus::cell::{self, CellDrain};
use serde_json::{json, Value};

use super::{link, list_body, ApiQuery, PageQuery};
use crate::audit::{self, Actor};
use crate::auth::User;
use crate::cells::HeardCell;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

fn cell_json(s: &AppState, c: &HeardCell, now: Instant) -> Value {
    let st = &c.state;
    let ago = now.saturating_duration_since(c.at);
    let heard_at = chrono::Utc::now()
        - chrono::Duration::from_std(ago).unwrap_or_else(|_| chrono::Duration::zero());
    let id = &st.cell_id;
    json!({
        "id": id,
        "zone": st.zone,
        "stacks": st.stacks,
        "evacuating": st.evacuating,
        "instances": st.instances_per_app.values().sum::<u64>(),
        "instances_per_app": st.instances_per_app,
        "starting": st.starting,
        "memory_mb": {"total": st.total_memory_mb, "available": st.available_memory_mb},
        "disk_mb": {"total": st.total_disk_mb, "available": st.available_disk_mb},
        "containers": {"total": st.total_containers, "available": st.available_containers},
        "last_heard_at": heard_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "last_heard_ms_ago": u64::try_from(ago.as_millis()).unwrap_or(u64::MAX),
        "links": {
            "self": link(s, &format!("/v3/cells/{id}")),
            "drain": {"href": format!("{}/v3/cells/{id}/actions/drain", s.base_url), "method": "POST"},
        },
    })
}

/// `GET /v3/cells`: every cell not yet lost (heard within the cell TTL), by id (`page`,
/// `per_page`).
pub async fn list(
    _: User,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Value>> {
    let (limit, offset) = q.limits()?;
    let now = Instant::now();
    let (total, resources) = {
        let inner = s.cells.lock();
        let mut cells: Vec<&HeardCell> = inner.cells.values().collect();
        cells.sort_by(|a, b| a.state.cell_id.cmp(&b.state.cell_id));
        let page: Vec<Value> = cells
            .iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|c| cell_json(&s, c, now))
            .collect();
        (cells.len() as i64, page)
    };
    Ok(Json(list_body(&s, "/v3/cells", "", &q, total, resources)))
}

/// `GET /v3/cells/:id`.
pub async fn get(
    _: User,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let inner = s.cells.lock();
    let c = inner.cells.get(&id).ok_or(ApiError::NotFound("Cell"))?;
    Ok(Json(cell_json(&s, c, Instant::now())))
}

/// `POST /v3/cells/:id/actions/drain`: 202 with the cell as last heard (it shows
/// `evacuating` from its next advertisement, at once); 404 for a cell not heard from.
pub async fn drain(
    user: User,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = {
        let inner = s.cells.lock();
        let c = inner.cells.get(&id).ok_or(ApiError::NotFound("Cell"))?;
        cell_json(&s, c, Instant::now())
    };
    s.nats
        .publish(
            cell::drain_subject(&id),
            kiln_bus::encode(&CellDrain {}).into(),
        )
        .await
        .map_err(|e| ApiError::internal("publishing a drain command", e))?;
    s.nats
        .flush()
        .await
        .map_err(|e| ApiError::internal("publishing a drain command", e))?;
    tracing::info!(cell = %id, user = %user.name, "draining a cell");
    let target = audit::Target {
        kind: "cell",
        guid: &id,
        name: &id,
    };
    audit::record(
        &s,
        "audit.cell.drain",
        Actor::User(&user),
        target,
        None,
        json!({}),
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(body)))
}
