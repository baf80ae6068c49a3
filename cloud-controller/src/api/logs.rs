//! App logs over HTTP: `GET /v3/apps/:guid/logs/recent` (the last lines, JSON) and
//! `GET /v3/apps/:guid/logs/stream` (server-sent events, one `log` event per line).

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::User;
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn recent(
    _: User,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    super::apps::find(&s, &app).await?;
    Ok(Json(json!({"resources": s.logs.recent(&app)})))
}

pub async fn stream(
    _: User,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    super::apps::find(&s, &app).await?;
    let live = s.logs.subscribe();
    let events = futures::stream::unfold(live, move |mut live| {
        let app = app.clone();
        async move {
            loop {
                match live.recv().await {
                    Ok(line) if line.app_guid == app => {
                        let event = Event::default()
                            .event("log")
                            .json_data(&line)
                            .unwrap_or_default();
                        return Some((Ok(event), live));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        return Some((
                            Ok(Event::default().event("lagged").data(n.to_string())),
                            live,
                        ))
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
