//! llama-server's slot routes: `GET /slots` lists the engine's slots, `POST
//! /slots/{id}?action=save|restore|erase` keeps a slot's KV state in a file of
//! [`ServerConfig::slot_save_path`](super::ServerConfig::slot_save_path) and brings it back.
//! Bodies and answers carry llama-server's field names (`filename`, `id_slot`, `n_saved`,
//! `n_written`, `n_restored`, `n_read`, `n_erased`, `timings`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::openai::ApiError;
use super::{parse, AppState};
use crate::error::Error;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotFileRequest {
    filename: String,
}

pub(super) async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let engine = state.engine.clone();
    let slots = run_blocking(move || engine.slots()).await?;
    Ok(Json(serde_json::to_value(slots).unwrap_or_default()))
}

pub(super) async fn action(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let id: u32 = id.parse().map_err(|_| ApiError::invalid(format!("{id:?} is not a slot number"), "id_slot"))?;
    let action = query.get("action").map(String::as_str).unwrap_or_default();
    let engine = state.engine.clone();
    let started = Instant::now();
    let ms = move || started.elapsed().as_secs_f64() * 1e3;
    match action {
        "erase" => {
            let n = run_blocking(move || engine.erase_slot(id)).await?;
            Ok(Json(json!({"id_slot": id, "n_erased": n})))
        }
        "save" | "restore" => {
            let req: SlotFileRequest = parse(&body)?;
            let path = file_in(state.config.slot_save_path.as_ref(), &req.filename)?;
            if action == "save" {
                let f = run_blocking(move || engine.save_slot(id, &path)).await?;
                Ok(Json(json!({
                    "id_slot": id, "filename": req.filename, "n_saved": f.tokens, "n_written": f.bytes,
                    "timings": {"save_ms": ms()},
                })))
            } else {
                if !path.exists() {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "invalid_request_error",
                        format!("no saved slot named {:?}", req.filename),
                    ));
                }
                let f = run_blocking(move || engine.restore_slot(id, &path)).await?;
                Ok(Json(json!({
                    "id_slot": id, "filename": req.filename, "n_restored": f.tokens, "n_read": f.bytes,
                    "timings": {"restore_ms": ms()},
                })))
            }
        }
        other => Err(ApiError::invalid(format!("action must be save, restore or erase, not {other:?}"), "action")),
    }
}

/// The file `name` in the slot folder: a plain file name (letters, digits, `.`, `_`, `-`, not
/// starting with `.`, at most 128 bytes), so a client never reaches outside the folder.
fn file_in(dir: Option<&PathBuf>, name: &str) -> Result<PathBuf, ApiError> {
    let Some(dir) = dir else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "invalid_request_error",
            "slots cannot be saved or restored: this server was started without --slot-save-path",
        ));
    };
    let plain = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain {
        return Err(ApiError::invalid(
            format!("{name:?} is not a plain file name (letters, digits, '.', '_', '-'; not starting with '.')"),
            "filename",
        ));
    }
    Ok(dir.join(name))
}

/// Runs an engine call that waits for the worker off tokio's async threads; maps its error.
async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> crate::Result<T> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()))?
        .map_err(|e| match e {
            Error::SlotBusy { .. } => ApiError::new(StatusCode::CONFLICT, "invalid_request_error", e.to_string()),
            Error::InvalidSeqId { .. } => ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", e.to_string()),
            Error::StateFile { .. } => ApiError::invalid(e.to_string(), "filename"),
            Error::Io { .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()),
            other => ApiError::from_error(other, 1),
        })
}
