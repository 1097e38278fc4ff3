//! LoRA adapters in the server, as llama-server has them: the adapters are loaded at start
//! ([`ServerConfig::lora`](super::ServerConfig::lora), `serve --lora`), each with a scale every
//! request gets; `GET /lora-adapters` lists them (`id`, `path`, `scale`), `POST
//! /lora-adapters` with `[{"id": 0, "scale": 0.5}, ...]` sets those scales (adapters it does
//! not name go to 0), and a request's own `lora` field (same shape) picks the scales for that
//! request alone (adapters it does not name: 0). Requests under different sets are served side
//! by side (the engine decodes each set in a decode of its own per step).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::openai::ApiError;
use super::{parse, AppState};
use crate::adapter::LoraAdapter;

/// The served adapters and the scales requests without a `lora` field get.
pub(crate) struct Adapters {
    adapters: Vec<LoraAdapter>,
    scales: Mutex<Vec<f32>>,
}

impl Adapters {
    pub(crate) fn new(loaded: &[(LoraAdapter, f32)]) -> Adapters {
        Adapters {
            adapters: loaded.iter().map(|(a, _)| a.clone()).collect(),
            scales: Mutex::new(loaded.iter().map(|(_, s)| *s).collect()),
        }
    }

    fn scales(&self) -> Vec<f32> {
        self.scales.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The adapter set for a request: its own `lora` list, or the served scales without one.
    /// `None` when no adapter is served (and none was asked for).
    pub(crate) fn for_request(&self, requested: Option<&Value>) -> Result<Option<Vec<(LoraAdapter, f32)>>, ApiError> {
        let scales = match requested {
            None | Some(Value::Null) => self.scales(),
            Some(list) => self.parse_scales(list, "lora")?,
        };
        if self.adapters.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.adapters.iter().cloned().zip(scales).filter(|(_, s)| *s != 0.0).collect()))
    }

    /// `[{"id": N, "scale": S}, ...]` as a scale per served adapter (unnamed ones 0).
    fn parse_scales(&self, list: &Value, field: &'static str) -> Result<Vec<f32>, ApiError> {
        let shape = || ApiError::invalid(format!("{field} must be a list of {{\"id\", \"scale\"}} objects"), field);
        let entries = list.as_array().ok_or_else(shape)?;
        let mut scales = vec![0.0; self.adapters.len()];
        for entry in entries {
            let id = entry.get("id").and_then(Value::as_u64).ok_or_else(shape)?;
            let scale = match entry.get("scale") {
                None | Some(Value::Null) => 0.0,
                Some(v) => v.as_f64().ok_or_else(shape)?,
            };
            let Some(slot) = usize::try_from(id).ok().and_then(|i| scales.get_mut(i)) else {
                return Err(ApiError::invalid(
                    format!(
                        "no LoRA adapter {id} (the server has {}; GET /lora-adapters lists them)",
                        self.adapters.len()
                    ),
                    field,
                ));
            };
            if !scale.is_finite() || scale.abs() > 1e6 {
                return Err(ApiError::invalid(format!("adapter {id}'s scale {scale} is not a usable number"), field));
            }
            *slot = scale as f32;
        }
        Ok(scales)
    }

    fn listing(&self) -> Value {
        let scales = self.scales();
        Value::Array(
            self.adapters
                .iter()
                .zip(scales)
                .enumerate()
                .map(|(id, (a, scale))| json!({"id": id, "path": a.path().display().to_string(), "scale": scale}))
                .collect(),
        )
    }
}

/// `GET /lora-adapters`.
pub(super) async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(state.lora.listing())
}

/// `POST /lora-adapters`: the served scales; answers with the new listing.
pub(super) async fn set(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let list: Value = parse(&body)?;
    let scales = state.lora.parse_scales(&list, "body")?;
    *state.lora.scales.lock().unwrap_or_else(|e| e.into_inner()) = scales;
    Ok(Json(state.lora.listing()))
}
