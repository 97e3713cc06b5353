//! `ListActions` / `DoAction`: small JSON-answering side calls.
//!
//! Every action is one entry in [`ACTIONS`] — its name, a description for
//! `ListActions`, and a handler — so adding one is one entry and one function.

use bytes::Bytes;
use pixelfeed_schema::spec::{preset, PRESET_NAMES};
use pixelfeed_schema::{excerpt, TransformSpec};
use serde_json::{json, Map, Value};
use tonic::Status;

use super::{dataset_status, summary};
use crate::auth::{require_operator, Role};
use crate::config::ServiceConfig;

/// An action handler: the service configuration and the action body in,
/// the JSON answer out.
type Handler = fn(&ServiceConfig, &[u8]) -> Result<Value, Status>;

/// One action the service answers.
pub(crate) struct ActionDef {
    /// The `Action.type` clients send.
    pub name: &'static str,
    /// What `ListActions` says about it.
    pub description: &'static str,
    /// Whether it needs the operator role ([`Role::Operator`]).
    admin: bool,
    handler: Handler,
}

/// Every action, in the order `ListActions` lists them.
pub(crate) const ACTIONS: &[ActionDef] = &[
    ActionDef {
        name: "presets",
        description: "JSON object mapping each built-in preset name to its fully resolved \
                      transform spec. Body: ignored.",
        admin: false,
        handler: presets,
    },
    ActionDef {
        name: "stats",
        description: "JSON {\"pool\": {...}, \"input\": {...}, \"threads\": N, \
                      \"decoders\": {...}}: the output memory pool's mode (pinned or pageable, \
                      with the reason) and block counters; the input bytes in flight and their \
                      cap; the engine's worker threads; and the JPEG decoders this build has \
                      (the default, which `auto` means, first). Body: ignored.",
        admin: false,
        handler: stats,
    },
    ActionDef {
        name: "register_dataset",
        description: "Operator only. Registers a server-side dataset under one of the \
                      server's --dataset-root directories (off without one). Body: JSON \
                      {\"name\", \"uri\"} with uri [dir:|parquet:|tar:]PATH[?glob=...|?column=...]. \
                      Answer: JSON {\"name\", \"rows\"}.",
        admin: true,
        handler: register_dataset,
    },
    ActionDef {
        name: "datasets",
        description: "JSON list of the registered datasets, each {\"name\", \"uri\", \"rows\"}. \
                      Body: ignored.",
        admin: false,
        handler: datasets,
    },
    ActionDef {
        name: "health",
        description: "JSON {\"status\": \"ok\"} while the server is serving. Body: ignored.",
        admin: false,
        handler: health,
    },
];

/// Runs the action called `name`, returning its answer as JSON bytes.
pub(crate) fn run(
    config: &ServiceConfig,
    role: Role,
    name: &str,
    body: &[u8],
) -> Result<Bytes, Status> {
    let action = ACTIONS.iter().find(|a| a.name == name).ok_or_else(|| {
        let known: Vec<_> = ACTIONS.iter().map(|a| a.name).collect();
        Status::unimplemented(format!(
            "unknown action {} (known: {})",
            excerpt(name),
            known.join(", ")
        ))
    })?;
    if action.admin {
        require_operator(role, &format!("the {name} action"))?;
    }
    let value = (action.handler)(config, body)?;
    Ok(Bytes::from(value.to_string()))
}

fn presets(_: &ServiceConfig, _: &[u8]) -> Result<Value, Status> {
    let mut out = Map::new();
    for name in PRESET_NAMES {
        // Resolve through the validator so clients see every default filled
        // in, exactly as the server will apply it.
        let raw = preset(name)
            .ok_or_else(|| Status::internal(format!("preset {name:?} is listed but undefined")))?;
        let spec = TransformSpec::from_value(&raw)
            .map_err(|e| Status::internal(format!("preset {name:?} is invalid: {e}")))?;
        out.insert((*name).to_string(), spec.to_value());
    }
    Ok(Value::Object(out))
}

fn stats(config: &ServiceConfig, _: &[u8]) -> Result<Value, Status> {
    Ok(json!({
        "pool": config.allocator.stats(),
        "input": {
            "bytes_in_flight": config.metrics.input_bytes_in_flight().get(),
            "max_bytes_in_flight": config.limits.max_input_bytes_in_flight,
        },
        "output": {
            "bytes_in_flight": config.metrics.output_bytes_in_flight().get(),
        },
        "threads": pixelfeed_engine::worker_threads(),
        "decoders": pixelfeed_engine::decoders_json(),
    }))
}

fn health(_: &ServiceConfig, _: &[u8]) -> Result<Value, Status> {
    Ok(json!({"status": "ok"}))
}

/// The `register_dataset` action: body JSON `{"name", "uri"}`, answer JSON
/// `{"name", "rows"}`. Blocking (opening may list or scan files).
fn register_dataset(config: &ServiceConfig, body: &[u8]) -> Result<Value, Status> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        name: String,
        uri: String,
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        Status::invalid_argument(format!(
            "register_dataset takes JSON {{\"name\": ..., \"uri\": ...}}: {e}"
        ))
    })?;
    let Some(roots) = &config.datasets.roots else {
        return Err(Status::permission_denied(
            "registering datasets at run time is off: the operator enables it for chosen \
             directories with --dataset-root DIR",
        ));
    };
    let dataset = config
        .datasets
        .registry
        .register_within(&body.name, &body.uri, roots)
        .map_err(dataset_status)?;
    tracing::info!(name = %body.name, uri = %body.uri, rows = dataset.rows(), "dataset registered");
    Ok(json!({"name": dataset.name(), "rows": dataset.rows()}))
}

/// The `datasets` action: JSON list of `{"name", "uri", "rows"}`.
fn datasets(config: &ServiceConfig, _: &[u8]) -> Result<Value, Status> {
    Ok(Value::Array(
        config
            .datasets
            .registry
            .list()
            .iter()
            .map(|d| summary(d))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve_every_listed_preset() {
        let bytes = run(&ServiceConfig::default(), Role::Operator, "presets", b"").unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let imagenet = TransformSpec::from_value(&v["imagenet"]).unwrap();
        assert_eq!(imagenet.shape(), [3, 224, 224]);
        assert_eq!(v.as_object().unwrap().len(), PRESET_NAMES.len());
    }

    #[test]
    fn unknown_action_is_unimplemented() {
        let err = run(&ServiceConfig::default(), Role::Operator, "nope", b"").unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert!(err.message().contains("presets"));
    }

    #[test]
    fn stats_reports_the_allocator() {
        let bytes = run(&ServiceConfig::default(), Role::Operator, "stats", b"").unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["pool"]["mode"], "heap");
        let jpeg = v["decoders"]["jpeg"].as_array().unwrap();
        assert_eq!(jpeg.last().unwrap(), "zune-jpeg 0.5.15");
        assert_eq!(v["decoders"]["jpeg_default"], jpeg[0]);
        assert!(v["threads"].as_u64().unwrap() >= 1);
        assert_eq!(
            v["input"]["max_bytes_in_flight"],
            crate::DEFAULT_MAX_INPUT_BYTES_IN_FLIGHT
        );
    }

    #[test]
    fn action_names_are_unique() {
        let mut names: Vec<_> = ACTIONS.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ACTIONS.len());
    }
}
