//! Resource matching, as the cf CLI does it before an upload: `POST /v3/resource_matches`
//! with the sha1 and size of each app file answers with those the controller already has in
//! its resource pool, and the upload then sends only the others plus a `resources` list naming
//! the matched ones. This module reads and checks those lists (both the V3 shape and the older
//! `{fn, sha1, size, mode}` one of the cf CLI v6).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::resource_pool::ResourcePool;
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The most entries one list may have (the cf CLI sends at most 1000 per request).
pub const MAX_ENTRIES: usize = 10_000;

/// The largest body of a resource list (10 000 entries with long paths fit).
pub const MAX_BODY: usize = 8 << 20;

/// One file of a resource list, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Lowercase hex sha1 of the content.
    pub sha1: String,
    /// Size in bytes.
    pub size: u64,
    /// Where it goes in the app folder, clean (`a/b`); `None` only in a match request.
    pub path: Option<String>,
    /// Permission bits (`0o644` when not given).
    pub mode: u32,
}

/// Reads the list `v` (named `field` in errors), checking every entry; paths are required
/// (and must stay inside the app folder, once each) when `need_paths`.
pub fn parse_list(v: &Value, field: &str, need_paths: bool) -> ApiResult<Vec<Resource>> {
    let list = v
        .as_array()
        .ok_or_else(|| bad(format!("{field} must be a list")))?;
    if list.len() > MAX_ENTRIES {
        return Err(bad(format!(
            "{field} must have at most {MAX_ENTRIES} entries"
        )));
    }
    let mut paths = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let r = parse_entry(entry, &format!("{field}[{i}]"), need_paths)?;
        if let Some(p) = &r.path {
            if !paths.insert(p.clone()) {
                return Err(bad(format!("{field}[{i}].path `{p}` is listed twice")));
            }
        }
        out.push(r);
    }
    Ok(out)
}

fn bad(m: String) -> ApiError {
    ApiError::Unprocessable(m)
}

/// One entry: `{checksum:{value}, size_in_bytes, path, mode}` or `{sha1, size, fn, mode}`.
fn parse_entry(e: &Value, at: &str, need_path: bool) -> ApiResult<Resource> {
    if !e.is_object() {
        return Err(bad(format!("{at} must be an object")));
    }
    let v3 = e.get("checksum").is_some() || e.get("size_in_bytes").is_some();
    let (sha_field, size_field, path_field) = if v3 {
        ("checksum.value", "size_in_bytes", "path")
    } else {
        ("sha1", "size", "fn")
    };
    let sha1 = if v3 {
        &e["checksum"]["value"]
    } else {
        &e["sha1"]
    };
    let sha1 = sha1
        .as_str()
        .filter(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| bad(format!("{at}.{sha_field} must be a sha1 (40 hex digits)")))?
        .to_ascii_lowercase();
    let size = e[size_field]
        .as_u64()
        .ok_or_else(|| bad(format!("{at}.{size_field} must be a non-negative integer")))?;
    let path = match &e[path_field] {
        Value::Null if !need_path => None,
        Value::String(p) => Some(
            clean_resource_path(p)
                .map_err(|why| bad(format!("{at}.{path_field} `{p}` is refused: {why}")))?,
        ),
        _ => return Err(bad(format!("{at}.{path_field} must be a file path"))),
    };
    let mode = parse_mode(&e["mode"]).ok_or_else(|| {
        bad(format!(
            "{at}.mode must be octal permissions such as \"644\" or \"0755\""
        ))
    })?;
    Ok(Resource {
        sha1,
        size,
        path,
        mode,
    })
}

/// A file path of a resource: relative, inside the app folder, naming a file (not `a/`).
fn clean_resource_path(p: &str) -> Result<String, String> {
    if p.ends_with('/') || p.contains('\0') {
        return Err("it must name a file".into());
    }
    let clean = crate::package_check::clean_path(p)?;
    let s = clean
        .to_str()
        .filter(|s| !s.is_empty())
        .ok_or("it must name a file")?;
    Ok(s.to_string())
}

/// `"644"`, `"0755"`, `"100644"` (type bits are dropped) or the same digits as a number;
/// `0o644` when absent.
fn parse_mode(v: &Value) -> Option<u32> {
    let digits = match v {
        Value::Null => return Some(0o644),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_u64()?.to_string(),
        _ => return None,
    };
    if digits.is_empty() || digits.len() > 7 {
        return None;
    }
    u32::from_str_radix(&digits, 8).ok().map(|m| m & 0o777)
}

/// `POST /v3/resource_matches`: `{"resources": [...]}` -> 201 with the entries (as sent) whose
/// sha1 and size the pool holds.
pub async fn create(
    _: User,
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge((MAX_BODY >> 20) as u64)
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    let body: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let entries = body.get("resources").cloned().unwrap_or(Value::Null);
    let resources = parse_list(&entries, "resources", false)?;
    let pool = ResourcePool::of(&s);
    let found = tokio::task::spawn_blocking(move || {
        resources
            .iter()
            .map(|r| pool.has(&r.sha1, r.size))
            .collect::<Vec<bool>>()
    })
    .await
    .map_err(|e| ApiError::internal("matching resources", e))?;
    let list = entries.as_array().map(Vec::as_slice).unwrap_or_default();
    let matched: Vec<&Value> = list
        .iter()
        .zip(found)
        .filter_map(|(e, hit)| hit.then_some(e))
        .collect();
    Ok((StatusCode::CREATED, Json(json!({ "resources": matched }))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";

    #[test]
    fn both_shapes_are_read_and_every_field_is_checked() {
        let v3 = json!([{"checksum": {"value": SHA.to_uppercase()}, "size_in_bytes": 3, "path": "./a//b", "mode": "0755"}]);
        let r = parse_list(&v3, "resources", true).unwrap();
        assert_eq!(
            r,
            vec![Resource {
                sha1: SHA.into(),
                size: 3,
                path: Some("a/b".into()),
                mode: 0o755
            }]
        );
        let v6 = json!([{"sha1": SHA, "size": 0, "fn": "c"}]);
        assert_eq!(parse_list(&v6, "resources", true).unwrap()[0].mode, 0o644);
        let err = |v: Value| match parse_list(&v, "resources", true) {
            Err(ApiError::Unprocessable(m)) => m,
            other => panic!("{other:?}"),
        };
        let e = err(json!([{"checksum": {"value": "abc"}, "size_in_bytes": 1, "path": "a"}]));
        assert!(e.contains("resources[0].checksum.value"), "{e}");
        let e = err(json!([{"checksum": {"value": SHA}, "size_in_bytes": -1, "path": "a"}]));
        assert!(e.contains("resources[0].size_in_bytes"), "{e}");
        let e = err(json!([{"checksum": {"value": SHA}, "size_in_bytes": 1, "path": "../x"}]));
        assert!(e.contains("outside the app folder"), "{e}");
        let e = err(
            json!([{"checksum": {"value": SHA}, "size_in_bytes": 1, "path": "a", "mode": "rwx"}]),
        );
        assert!(e.contains("resources[0].mode"), "{e}");
        let e = err(json!([{"checksum": {"value": SHA}, "size_in_bytes": 1}]));
        assert!(e.contains("resources[0].path"), "{e}");
        let twice = json!({"checksum": {"value": SHA}, "size_in_bytes": 1, "path": "a"});
        let e = err(json!([twice.clone(), twice]));
        assert!(e.contains("listed twice"), "{e}");
        assert!(err(json!({"a": 1})).contains("must be a list"));
        assert!(parse_list(
            &json!([{"checksum": {"value": SHA}, "size_in_bytes": 1}]),
            "r",
            false
        )
        .is_ok());
    }
}
