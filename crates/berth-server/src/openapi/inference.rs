//! The inference routes, health and the document itself in the OpenAPI document. Their bodies
//! are read by the gateway (`berth-gateway`) and forwarded to replicas, not by typed handlers, so
//! they are described here, with the rules the gateway enforces: what a body must be to get past
//! validation, and every status it can answer.

use serde_json::{json, Value};

use crate::routes::inference::{CHAT_PATH, NATIVE_PATH};

/// The errors of a route in `envelope` (a schema reference), by status.
fn errors(envelope: &str, statuses: &[(u16, &str)]) -> serde_json::Map<String, Value> {
    statuses
        .iter()
        .map(|(status, description)| {
            (
                status.to_string(),
                json!({
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": envelope}}}
                }),
            )
        })
        .collect()
}

const CALL_ERRORS: &[(u16, &str)] = &[
    (400, "The body is not valid JSON, a parameter is missing or out of range, or the body is over 1 MiB."),
    (401, "No key, or an unknown or revoked one."),
    (403, "The workspace header names another workspace than the key's."),
    (404, "No deployment of that name in the caller's workspace."),
    (429, "Over the deployment's `rpm_limit` or `tpm_limit`; `Retry-After` says when to retry."),
    (500, "The replica failed or broke off the answer."),
    (503, "No replica became ready within the hold time, or too many calls wait; `Retry-After` says when to retry."),
];

/// The paths, keyed by path.
pub(super) fn paths() -> Value {
    let native_errors = errors("#/components/schemas/ErrorBody", CALL_ERRORS);
    let openai_errors = errors("#/components/schemas/OpenAiErrorBody", CALL_ERRORS);
    let mut native_responses = native_errors;
    native_responses.insert(
        "200".into(),
        json!({
            "description": "The answer; with `X-DashScope-SSE: enable`, server-sent events, each `data:` a GenerationResponse.",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/GenerationResponse"}},
                "text/event-stream": {"schema": {"type": "string"}}
            }
        }),
    );
    let mut chat_responses = openai_errors;
    chat_responses.insert(
        "200".into(),
        json!({
            "description": "The replica's chat completion; with `stream: true`, server-sent events of chat completion chunks, then `data: [DONE]`. A replica's own error status is passed on with its body.",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}}
            }
        }),
    );
    let models_responses = {
        let mut r = errors(
            "#/components/schemas/OpenAiErrorBody",
            &[(401, CALL_ERRORS[1].1), (403, CALL_ERRORS[2].1)],
        );
        r.insert(
            "200".into(),
            json!({
                "description": "The deployments of the caller's workspace that can be called.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelList"}}}
            }),
        );
        r
    };
    json!({
        NATIVE_PATH: {"post": {
            "tags": ["inference"],
            "summary": "Calls a deployment with the native DashScope text-generation API.",
            "operationId": "generation",
            "parameters": [{
                "name": "X-DashScope-SSE", "in": "header", "required": false,
                "description": "`enable` for server-sent events.",
                "schema": {"type": "string"}
            }],
            "requestBody": {"required": true, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/GenerationRequest"}}}},
            "responses": native_responses
        }},
        CHAT_PATH: {"post": {
            "tags": ["inference"],
            "summary": "Calls a deployment with the OpenAI chat-completions API; the body goes to the replica as sent.",
            "operationId": "chat_completions",
            "requestBody": {"required": true, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}},
            "responses": chat_responses
        }},
        "/compatible-mode/v1/models": {"get": {
            "tags": ["inference"],
            "summary": "The deployments the caller can call, as OpenAI models.",
            "operationId": "openai_models",
            "responses": models_responses
        }},
        "/healthz": {"get": {
            "tags": ["server"],
            "summary": "Liveness: `ok` while the server answers.",
            "operationId": "healthz",
            "security": [],
            "responses": {"200": {"description": "`ok`", "content": {"text/plain": {"schema": {"type": "string"}}}}}
        }},
        "/openapi.json": {"get": {
            "tags": ["server"],
            "summary": "This document.",
            "operationId": "openapi",
            "security": [],
            "responses": {"200": {"description": "The OpenAPI document.", "content": {"application/json": {"schema": {"type": "object"}}}}}
        }}
    })
}

/// The schemas the paths refer to, keyed by name.
pub(super) fn schemas() -> Value {
    json!({
        "ChatMessage": {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"type": "string", "description": "`system`, `user` or `assistant`."},
                "content": {"description": "Text, or a list of content parts."}
            }
        },
        "GenerationRequest": {
            "type": "object",
            "required": ["model", "input"],
            "properties": {
                "model": {"type": "string", "pattern": "\\S", "description": "The `deployed_model` to call."},
                "input": {
                    "type": "object",
                    "description": "`messages`, or the legacy `prompt`; at least one, not empty.",
                    "properties": {
                        "messages": {"type": "array", "items": {"$ref": "#/components/schemas/ChatMessage"}},
                        "prompt": {"type": "string"}
                    },
                    "anyOf": [
                        {"required": ["messages"], "properties": {"messages": {"type": "array", "minItems": 1}}},
                        {"required": ["prompt"], "properties": {"prompt": {"type": "string", "minLength": 1}}}
                    ]
                },
                "parameters": {
                    "type": "object",
                    "description": "Unknown parameters are ignored.",
                    "properties": {
                        "result_format": {"type": "string", "enum": ["text", "message"]},
                        "incremental_output": {"type": "boolean"},
                        "temperature": {"type": "number", "minimum": 0, "exclusiveMaximum": 2},
                        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                        "top_k": {"type": "integer", "minimum": 0, "maximum": 2147483647},
                        "seed": {"type": "integer", "minimum": 0, "maximum": 4294967295_u64},
                        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2147483647},
                        "stop": {"description": "A string or a list.", "oneOf": [{"type": "string"}, {"type": "array"}]},
                        "repetition_penalty": {"type": "number", "exclusiveMinimum": 0},
                        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2}
                    }
                }
            }
        },
        "GenerationResponse": {
            "type": "object",
            "required": ["output", "usage", "request_id"],
            "properties": {
                "request_id": {"type": "string"},
                "output": {
                    "type": "object",
                    "description": "`text` and `finish_reason` (`result_format: text`), or `choices` (`message`)."
                },
                "usage": {
                    "type": "object",
                    "required": ["input_tokens", "output_tokens", "total_tokens"],
                    "properties": {
                        "input_tokens": {"type": "integer", "minimum": 0},
                        "output_tokens": {"type": "integer", "minimum": 0},
                        "total_tokens": {"type": "integer", "minimum": 0}
                    }
                }
            }
        },
        "ChatCompletionRequest": {
            "type": "object",
            "required": ["model", "messages"],
            "description": "The OpenAI request; fields besides these go to the replica untouched.",
            "properties": {
                "model": {"type": "string", "minLength": 1, "description": "The `deployed_model` to call."},
                "messages": {"type": "array", "items": {"$ref": "#/components/schemas/ChatMessage"}},
                "stream": {"type": ["boolean", "null"]},
                "stream_options": {
                    "type": ["object", "null"],
                    "properties": {
                        "include_usage": {"type": ["boolean", "null"]},
                        "continuous_usage_stats": {"type": ["boolean", "null"]}
                    }
                }
            }
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": {"type": "array", "items": {
                    "type": "object",
                    "required": ["id", "object", "created", "owned_by"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"type": "string", "enum": ["model"]},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"}
                    }
                }}
            }
        }
    })
}
