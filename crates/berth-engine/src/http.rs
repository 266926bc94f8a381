//! HTTP surface of the engine: routes, shared state, the JSON extractor wrapper and the
//! OpenAI error envelope.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::api::{
    ChatCompletionRequest, CompletionRequest, ErrorBody, ErrorEnvelope, ModelCard, ModelList, Usage,
};
use crate::metrics::{Metrics, Outcome};
use crate::params::{self, GenOptions, InvalidRequest};
use crate::render::{Endpoint, Renderer};
use crate::reply::{Collector, Output, StreamShaper};
use crate::structured;
use crate::tools::Tools;
use crate::worker::{Event, Job, Loaded};

/// State shared by all handlers.
#[derive(Debug)]
pub struct AppState {
    /// The id served in `/v1/models` and responses.
    pub model_id: String,
    /// Unix seconds the engine started (the model card's `created`).
    pub created: u64,
    pub metrics: Arc<Metrics>,
    /// Set once the model is loaded and warmed up.
    pub engine: OnceLock<Loaded>,
    /// `parallel + queue` permits: requests beyond that get 503.
    pub admission: Arc<Semaphore>,
    /// Set on SIGTERM/SIGINT: new requests get 503 while in-flight ones finish.
    pub draining: AtomicBool,
    /// The replica secret every call must carry, and the supervisor's last check.
    pub guard: Arc<crate::guard::Guard>,
}

/// The engine's router.
pub fn router(state: Arc<AppState>) -> Router {
    let guard = state.guard.clone();
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            guard,
            crate::guard::require_secret,
        ))
}

/// Errors answered to clients, in the OpenAI envelope.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or has invalid parameters.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// 503: loading, draining or the queue is full; retry later.
    #[error("{0}")]
    Unavailable(&'static str),
    /// 404: no such route.
    #[error("not found")]
    NotFound,
    /// 500: something failed inside the engine (logged; the client sees a generic message).
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, message, param, code) = match self {
            ApiError::Invalid(e) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                e.message,
                e.param,
                e.code,
            ),
            ApiError::Unavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                m.to_owned(),
                None,
                Some("service_unavailable"),
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "no such endpoint".to_owned(),
                None,
                Some("not_found"),
            ),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the engine failed to generate a response".to_owned(),
                    None,
                    Some("internal_error"),
                )
            }
        };
        let body = ErrorEnvelope {
            error: ErrorBody {
                message,
                kind,
                param,
                code,
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// JSON body extractor whose rejections use the OpenAI envelope (400), whatever the
/// `Content-Type`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            // Keep the status (e.g. 413 for an oversized body) but use the OpenAI envelope.
            let status = e.status();
            let mut resp = ApiError::Invalid(InvalidRequest {
                message: e.body_text(),
                param: None,
                code: None,
            })
            .into_response();
            *resp.status_mut() = status;
            resp
        })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            ApiError::Invalid(InvalidRequest {
                message: format!("invalid JSON body: {e}"),
                param: None,
                code: None,
            })
            .into_response()
        })
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (status, word) = if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if state.engine.get().is_some() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    };
    (status, Json(serde_json::json!({ "status": word }))).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.model_id.clone(),
            object: "model",
            created: state.created,
            owned_by: "berth",
        }],
    })
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let checked = params::chat(req).inspect_err(|_| state.metrics.request(Outcome::Invalid))?;
    let engine = ready_engine(&state)?;
    let prompt = engine
        .chat_prompt(&checked.messages, &checked.tools)
        .inspect_err(|_| state.metrics.request(Outcome::Invalid))?;
    let grammar = match structured::grammar(&checked.structure, &checked.tools) {
        None => None,
        Some(g) => Some(
            structured::compile(&engine.factory, g, &checked.structure, &checked.tools)
                .inspect_err(|_| state.metrics.request(Outcome::Invalid))?,
        ),
    };
    let output = Output {
        tools: checked.tools.active().then_some(checked.tools),
        logprobs: checked.logprobs,
        grammar,
    };
    generate(
        &state,
        engine,
        Endpoint::Chat,
        "messages",
        &prompt,
        checked.options,
        output,
        arrived,
    )
    .await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let checked =
        params::completion(req).inspect_err(|_| state.metrics.request(Outcome::Invalid))?;
    let engine = ready_engine(&state)?;
    generate(
        &state,
        engine,
        Endpoint::Text,
        "prompt",
        &checked.prompt,
        checked.options,
        Output::default(),
        arrived,
    )
    .await
}

fn ready_engine(state: &AppState) -> Result<&Loaded, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        state.metrics.request(Outcome::Rejected);
        return Err(ApiError::Unavailable("the engine is shutting down"));
    }
    state.engine.get().ok_or_else(|| {
        state.metrics.request(Outcome::Rejected);
        ApiError::Unavailable("the model is still loading")
    })
}

/// Tokenizes, admits and queues a generation, then answers as a whole or as an SSE stream.
#[allow(clippy::too_many_arguments)]
async fn generate(
    state: &Arc<AppState>,
    engine: &Loaded,
    endpoint: Endpoint,
    prompt_param: &str,
    prompt: &str,
    options: GenOptions,
    output: Output,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let tokens = engine.tokenize(prompt);
    let limit = engine.n_ctx_seq as usize;
    if tokens.is_empty() || tokens.len() >= limit {
        state.metrics.request(Outcome::Invalid);
        return Err(ApiError::Invalid(InvalidRequest {
            message: format!(
                "the prompt has {} tokens; this engine's context holds {} tokens per sequence \
                 (prompt plus completion), so the prompt must be shorter",
                tokens.len(),
                limit
            ),
            param: Some(prompt_param.to_owned()),
            code: Some("context_length_exceeded"),
        }));
    }
    let Ok(permit) = state.admission.clone().try_acquire_owned() else {
        state.metrics.request(Outcome::Rejected);
        return Err(ApiError::Unavailable(
            "the engine is at capacity (all slots busy and the queue is full); retry later",
        ));
    };
    let prompt_tokens = tokens.len() as u32;
    let (tx, rx) = mpsc::unbounded_channel();
    let Output {
        tools,
        logprobs,
        grammar,
    } = output;
    let job = Job {
        prompt: tokens,
        sampling: options.sampling,
        grammar: grammar.map(Box::new),
        logprobs,
        max_tokens: options.max_tokens,
        stop: options.stop,
        arrived,
        events: tx,
    };
    state.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    if engine.submit(job).is_err() {
        state.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::Internal("the decode thread is gone".into()));
    }
    let mut renderer = Renderer::new(endpoint, state.model_id.clone(), options.include_usage);
    if options.continuous_usage {
        renderer.continuous_usage = Some(prompt_tokens);
    }
    renderer.logprobs = logprobs.is_some();
    if options.stream {
        Ok(stream_response(
            StreamShaper::new(renderer, tools),
            rx,
            permit,
        ))
    } else {
        collect(renderer, tools, rx, permit).await
    }
}

/// Waits for the whole generation. If the handler future is dropped (client gone), the
/// receiver goes with it and the decode thread cancels the job.
async fn collect(
    renderer: Renderer,
    tools: Option<Tools>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    _permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let mut answer = Collector::default();
    let value = loop {
        match rx.recv().await {
            Some(Event::Text { text, logprobs, .. }) => answer.push(&text, logprobs),
            Some(Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                let (answer, reason) = answer.finish(tools.as_ref(), reason);
                break renderer.response(
                    answer,
                    reason,
                    Usage::new(prompt_tokens, completion_tokens),
                );
            }
            Some(Event::Failed(e)) => return Err(ApiError::Internal(e)),
            None => return Err(ApiError::Internal("decode thread stopped".into())),
        }
    };
    Ok(Json(value).into_response())
}

/// Interval of SSE keep-alive comments on an idle stream.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// State of an SSE stream.
struct StreamState {
    renderer: StreamShaper,
    rx: mpsc::UnboundedReceiver<Event>,
    started: bool,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

fn stream_response(
    renderer: StreamShaper,
    rx: mpsc::UnboundedReceiver<Event>,
    permit: OwnedSemaphorePermit,
) -> Response {
    let st = StreamState {
        renderer,
        rx,
        started: false,
        done: false,
        _permit: permit,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if !st.started {
            st.started = true;
            if let Some(first) = st.renderer.start() {
                return Some((first, st));
            }
        }
        loop {
            // An SSE comment every second while nothing else is sent: a client that went away
            // (even one still waiting in the queue) is noticed on the failed write, which drops
            // this stream and so cancels the job.
            let event = match tokio::time::timeout(KEEP_ALIVE, st.rx.recv()).await {
                Ok(event) => event,
                Err(_) => return Some((Bytes::from_static(b": keep-alive\n\n"), st)),
            };
            let frame = match event {
                Some(Event::Text {
                    text,
                    generated,
                    logprobs,
                }) => st.renderer.text(text, generated, logprobs),
                Some(Event::Done {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    st.done = true;
                    st.renderer
                        .finish(reason, Usage::new(prompt_tokens, completion_tokens))
                }
                Some(Event::Failed(e)) => {
                    tracing::error!(error = %e, "generation failed mid-stream");
                    st.done = true;
                    st.renderer.error("the engine failed while generating")
                }
                None => {
                    st.done = true;
                    st.renderer.error("the engine stopped")
                }
            };
            // Text held back (a possible tool call) sends nothing yet.
            if !frame.is_empty() {
                return Some((frame, st));
            }
        }
    })
    .map(Ok::<_, std::convert::Infallible>);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| ApiError::Internal("response build".into()).into_response())
}
