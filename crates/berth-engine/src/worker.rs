//! The decode thread: owns the llama.cpp model context and runs continuous batching.
//!
//! One `std::thread` owns the context (llama.cpp contexts must not be shared between threads).
//! Each loop iteration admits queued jobs into free sequence slots, builds one `LlamaBatch`
//! holding one token for every decoding sequence plus prompt chunks of newly admitted ones
//! (chunked prefill), runs one `decode`, samples every sequence that produced logits with its
//! own sampler chain, streams the text back over the job's channel and frees finished or
//! cancelled sequences at once.
//!
//! KV cache layout: `n_seq_max = parallel` with a *per-sequence* (non-unified) KV cache, so each
//! sequence gets `ctx / parallel` positions. Attention then runs only over a sequence's own
//! cells, which is faster than a unified cache when sequences share no prefix, and one long
//! request can never starve the others of cache space.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use llguidance::{Matcher, ParserFactory};
use tokio::sync::{mpsc, oneshot};

use crate::api::{TokenLogprob, TopLogprob};
use crate::metrics::{Metrics, Outcome};
use crate::params::{ChatMessage, InvalidRequest, Sampling};
use crate::template::ToolTemplate;
use crate::text::{StopMatcher, Utf8Buffer};
use crate::tools::{self, Tools};

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// `max_tokens` reached or the sequence's context is full.
    Length,
    /// The answer is tool calls (set by the HTTP layer, which finds them in the text).
    ToolCalls,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// What the decode thread sends back for a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Newly generated text (complete UTF-8, stop strings removed), the number of tokens
    /// generated so far, and the log-probabilities of the tokens since the last event (when the
    /// job asked for them; a token whose text is held back reports with the next event).
    Text {
        text: String,
        generated: u32,
        logprobs: Vec<TokenLogprob>,
    },
    /// The job finished; no more events follow.
    Done {
        reason: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    /// The job failed inside llama.cpp; no more events follow.
    Failed(String),
}

/// One generation request, ready for the decode thread.
pub struct Job {
    pub prompt: Vec<LlamaToken>,
    pub sampling: Sampling,
    /// The grammar the output must follow (compiled with [`Loaded::factory`]).
    pub grammar: Option<Box<Matcher>>,
    /// `Some(n)`: report each token's log-probability with its `n` most likely alternatives.
    pub logprobs: Option<u8>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub arrived: Instant,
    pub events: mpsc::UnboundedSender<Event>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("prompt_tokens", &self.prompt.len())
            .field("sampling", &self.sampling)
            .field("constrained", &self.grammar.is_some())
            .field("logprobs", &self.logprobs)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

/// How to load the model and size the context.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub model: PathBuf,
    pub ctx: u32,
    pub parallel: u32,
    pub threads: i32,
    pub batch: u32,
}

/// The loaded model, shared with HTTP handlers for templating and tokenization.
pub struct Loaded {
    model: Arc<LlamaModel>,
    template: LlamaChatTemplate,
    /// Positions available to one sequence (prompt + generated).
    pub n_ctx_seq: u32,
    /// Compiles output grammars against this model's vocabulary.
    pub factory: Arc<ParserFactory>,
    /// The model's own chat template, when it knows tools.
    tool_template: Option<ToolTemplate>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("n_ctx_seq", &self.n_ctx_seq)
            .finish_non_exhaustive()
    }
}

impl Loaded {
    /// Renders chat messages with the model's own chat template (ChatML if it has none).
    /// A conversation with tools or tool turns goes through the GGUF's Jinja template when that
    /// knows tools; otherwise tools, earlier calls and tool results are written into the turns
    /// as text ([`tools::plain_turns`]), since llama.cpp's built-in templates cannot.
    pub fn chat_prompt(
        &self,
        messages: &[ChatMessage],
        tools: &Tools,
    ) -> Result<String, InvalidRequest> {
        let tool_turns = messages
            .iter()
            .any(|m| !m.tool_calls.is_empty() || m.role == "tool");
        if let Some(t) = self
            .tool_template
            .as_ref()
            .filter(|_| tools.active() || tool_turns)
        {
            match t.render(messages, tools) {
                Ok(prompt) => return Ok(prompt),
                Err(e) => {
                    tracing::debug!(error = %e, "chat template failed; using the fallback tool prompt")
                }
            }
        }
        let chat = tools::plain_turns(messages, tools)
            .into_iter()
            .map(|(role, content)| LlamaChatMessage::new(role, content))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| InvalidRequest::new("messages", e.to_string()))?;
        self.model
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| InvalidRequest::new("messages", format!("chat template failed: {e}")))
    }

    /// Tokenizes a prompt the way llama-server does (special tokens parsed, BOS if the model
    /// wants one).
    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), true, true)
    }

    /// Hands a job to the decode thread; gives it back if that thread is gone.
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        self.jobs.send(job).map_err(|e| Box::new(e.0))
    }
}

/// Starts the decode thread. It loads the model, warms it up, then reports on `ready`.
pub fn spawn(
    config: WorkerConfig,
    metrics: Arc<Metrics>,
    ready: oneshot::Sender<Result<Loaded, String>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("berth-decode".into())
        .spawn(move || {
            if let Err(e) = run_thread(config, metrics, ready) {
                tracing::error!(error = %e, "decode thread failed");
            }
        })
        .map(|_| ())
}

fn run_thread(
    config: WorkerConfig,
    metrics: Arc<Metrics>,
    ready: oneshot::Sender<Result<Loaded, String>>,
) -> Result<(), String> {
    let fail = |ready: oneshot::Sender<Result<Loaded, String>>, msg: String| {
        let _ = ready.send(Err(msg.clone()));
        Err(msg)
    };
    let backend = match LlamaBackend::init() {
        Ok(b) => b,
        Err(e) => return fail(ready, format!("llama.cpp backend init failed: {e}")),
    };
    let started = Instant::now();
    let model =
        match LlamaModel::load_from_file(&backend, &config.model, &LlamaModelParams::default()) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                return fail(
                    ready,
                    format!("cannot load model {}: {e}", config.model.display()),
                )
            }
        };
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(config.ctx))
        .with_n_batch(config.batch)
        .with_n_ubatch(config.batch)
        .with_n_seq_max(config.parallel)
        .with_kv_unified(false)
        .with_n_threads(config.threads)
        .with_n_threads_batch(config.threads)
        .with_no_perf(true);
    let mut ctx = match model.new_context(&backend, ctx_params) {
        Ok(c) => c,
        Err(e) => return fail(ready, format!("cannot create llama.cpp context: {e}")),
    };
    // Our own bound, never above llama.cpp's (it pads its per-sequence size upwards).
    let n_ctx_seq = ctx.n_ctx() / config.parallel.max(1);
    if let Err(e) = warm_up(&model, &mut ctx) {
        return fail(ready, format!("warm-up generation failed: {e}"));
    }
    let template = model
        .chat_template(None)
        .or_else(|_| LlamaChatTemplate::new("chatml"))
        .map_err(|e| format!("chat template: {e}"));
    let template = match template {
        Ok(t) => t,
        Err(e) => return fail(ready, e),
    };
    tracing::info!(
        model = %config.model.display(),
        n_ctx = ctx.n_ctx(),
        n_ctx_seq,
        parallel = config.parallel,
        threads = config.threads,
        load_secs = started.elapsed().as_secs_f64(),
        "model loaded and warmed up"
    );
    let factory = match grammar_factory(&model) {
        Ok(f) => Arc::new(f),
        Err(e) => return fail(ready, format!("cannot prepare constrained decoding: {e}")),
    };
    let tool_template = template.to_string().ok().and_then(|source| {
        let vocab = model.vocab();
        let text = |t: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        };
        ToolTemplate::new(&source, text(vocab.bos()), text(vocab.eos()))
    });
    tracing::info!(
        tool_template = tool_template.is_some(),
        "tools are rendered by {}",
        if tool_template.is_some() {
            "the model's chat template"
        } else {
            "berth's fallback prompt"
        }
    );
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let loaded = Loaded {
        model: model.clone(),
        template,
        n_ctx_seq,
        factory,
        tool_template,
        jobs: jobs_tx,
    };
    if ready.send(Ok(loaded)).is_err() {
        return Ok(());
    }
    let mut batcher = Batcher::new(
        &model,
        ctx,
        config.parallel,
        n_ctx_seq,
        config.batch,
        metrics,
    );
    batcher.run(jobs_rx);
    Ok(())
}

/// The llguidance parser factory over the model's vocabulary (built once: it walks every token).
fn grammar_factory(model: &LlamaModel) -> Result<ParserFactory, String> {
    let env = LlamaSampler::llguidance_tok_env(model);
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
    factory.quiet();
    Ok(factory)
}

/// One real generation step, so that `/health` says 200 only when decoding works.
fn warm_up(model: &LlamaModel, ctx: &mut LlamaContext<'_>) -> Result<(), String> {
    let tokens = model.vocab().tokenize(b"Hello", true, true);
    if tokens.is_empty() {
        return Err("tokenizer produced no tokens".into());
    }
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    batch
        .add_sequence(&tokens, 0, false)
        .map_err(|e| e.to_string())?;
    ctx.decode(&mut batch).map_err(|e| e.to_string())?;
    let mut sampler = LlamaSampler::greedy();
    let token = sampler.sample(ctx, batch.n_tokens() - 1);
    let mut batch = LlamaBatch::new(1, 1);
    batch
        .add(token, tokens.len() as i32, &[0], true)
        .map_err(|e| e.to_string())?;
    ctx.decode(&mut batch).map_err(|e| e.to_string())?;
    ctx.clear_kv_cache();
    Ok(())
}

/// A sequence slot in use.
struct Slot {
    seq: i32,
    job: Job,
    sampler: LlamaSampler,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Next position to write.
    pos: i32,
    /// Token sampled last step, to be fed in the next batch.
    next: Option<LlamaToken>,
    /// Index in the current batch whose logits belong to this sequence.
    logits_at: Option<i32>,
    generated: u32,
    utf8: Utf8Buffer,
    stop: StopMatcher,
    last_token_at: Option<Instant>,
    /// Log-probabilities not yet sent (their text is held back).
    logprobs: Vec<TokenLogprob>,
}

struct Batcher<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    slots: Vec<Option<Slot>>,
    pending: VecDeque<Job>,
    batch: LlamaBatch<'static>,
    batch_cap: usize,
    n_ctx_seq: u32,
    metrics: Arc<Metrics>,
    piece: Vec<u8>,
    /// End-of-generation tokens, banned for `ignore_eos` requests.
    eog: Vec<LlamaToken>,
}

impl<'m> Batcher<'m> {
    fn new(
        model: &'m LlamaModel,
        ctx: LlamaContext<'m>,
        parallel: u32,
        n_ctx_seq: u32,
        batch: u32,
        metrics: Arc<Metrics>,
    ) -> Self {
        let batch_cap = batch.max(parallel) as usize;
        metrics.slots.store(parallel as i64, Ordering::Relaxed);
        let vocab = model.vocab();
        let eog = vocab.tokens().filter(|t| vocab.is_eog(*t)).collect();
        Self {
            model,
            ctx,
            slots: (0..parallel).map(|_| None).collect(),
            pending: VecDeque::new(),
            batch: LlamaBatch::new(batch_cap, 1),
            batch_cap,
            n_ctx_seq,
            metrics,
            piece: Vec::with_capacity(32),
            eog,
        }
    }

    fn run(&mut self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        loop {
            if self.idle() {
                match jobs.blocking_recv() {
                    Some(job) => self.pending.push_back(job),
                    None => return,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.pending.push_back(job);
            }
            self.drop_cancelled();
            self.admit();
            self.step();
        }
    }

    fn idle(&self) -> bool {
        self.pending.is_empty() && self.slots.iter().all(Option::is_none)
    }

    fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Forgets queued jobs whose client is gone and frees slots of cancelled sequences.
    fn drop_cancelled(&mut self) {
        let before = self.pending.len();
        self.pending.retain(|j| !j.events.is_closed());
        for _ in self.pending.len()..before {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            self.metrics.request(Outcome::Cancelled);
        }
        for i in 0..self.slots.len() {
            if self.slots[i]
                .as_ref()
                .is_some_and(|s| s.job.events.is_closed())
            {
                self.release(i, Outcome::Cancelled);
            }
        }
    }

    fn admit(&mut self) {
        while !self.pending.is_empty() {
            let Some(free) = self.slots.iter().position(Option::is_none) else {
                break;
            };
            let Some(job) = self.pending.pop_front() else {
                break;
            };
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            self.metrics
                .prompt_tokens
                .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
            let mut job = job;
            let sampler = build_sampler(
                &job.sampling,
                job.grammar.take(),
                self.model.n_vocab(),
                self.n_ctx_seq,
                &self.eog,
            );
            let stop = StopMatcher::new(job.stop.clone());
            self.slots[free] = Some(Slot {
                seq: free as i32,
                job,
                sampler,
                prefilled: 0,
                pos: 0,
                next: None,
                logits_at: None,
                generated: 0,
                utf8: Utf8Buffer::default(),
                stop,
                last_token_at: None,
                logprobs: Vec::new(),
            });
        }
        self.metrics.set_active(self.active());
    }

    /// Builds and decodes one batch, then samples every sequence that has logits.
    fn step(&mut self) {
        self.batch.clear();
        let mut budget = self.batch_cap;
        let mut decoding = 0usize;
        // Decode tokens first: running sequences never wait behind a long prefill.
        for slot in self.slots.iter_mut().flatten() {
            slot.logits_at = None;
            if let Some(tok) = slot.next.take() {
                slot.logits_at = Some(self.batch.n_tokens());
                if self.batch.add(tok, slot.pos, &[slot.seq], true).is_err() {
                    break;
                }
                slot.pos += 1;
                budget -= 1;
                decoding += 1;
            }
        }
        // Then prompt chunks of sequences still prefilling.
        for slot in self.slots.iter_mut().flatten() {
            let left = slot.job.prompt.len() - slot.prefilled;
            if left == 0 || budget == 0 || slot.logits_at.is_some() {
                continue;
            }
            let take = left.min(budget);
            for k in 0..take {
                let i = slot.prefilled + k;
                let last = i + 1 == slot.job.prompt.len();
                if last {
                    slot.logits_at = Some(self.batch.n_tokens());
                }
                // Capacity was reserved through `budget`.
                let _ = self
                    .batch
                    .add(slot.job.prompt[i], slot.pos, &[slot.seq], last);
                slot.pos += 1;
            }
            slot.prefilled += take;
            budget -= take;
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        let sequences = self.slots.iter().flatten().count();
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            tracing::error!(error = %e, sequences, "llama.cpp decode failed");
            for i in 0..self.slots.len() {
                if let Some(slot) = &self.slots[i] {
                    let _ = slot
                        .job
                        .events
                        .send(Event::Failed(format!("decode failed: {e}")));
                    self.release(i, Outcome::Failed);
                }
            }
            return;
        }
        self.metrics.decode_steps.fetch_add(1, Ordering::Relaxed);
        if decoding > 0 {
            self.metrics.batch_sequences.observe(decoding as f64);
        }
        for i in 0..self.slots.len() {
            let at = self.slots[i].as_ref().and_then(|s| s.logits_at);
            if let Some(at) = at {
                self.sample(i, at);
            }
        }
    }

    fn sample(&mut self, i: usize, at: i32) {
        let Some(slot) = self.slots[i].as_mut() else {
            return;
        };
        let token = slot.sampler.sample(&self.ctx, at);
        let now = Instant::now();
        let vocab = self.model.vocab();
        if let Some(top) = slot.job.logprobs.filter(|_| !vocab.is_eog(token)) {
            let logits = self.ctx.get_logits_ith(at);
            let piece = |t: LlamaToken| vocab.token_to_piece(t, true, None);
            slot.logprobs
                .push(token_logprob(logits, token.0 as usize, top as usize, piece));
        }
        if vocab.is_eog(token) {
            self.finish(i, FinishReason::Stop);
            return;
        }
        slot.generated += 1;
        self.metrics
            .generated_tokens
            .fetch_add(1, Ordering::Relaxed);
        match slot.last_token_at {
            None => self
                .metrics
                .ttft
                .observe((now - slot.job.arrived).as_secs_f64()),
            Some(prev) => self.metrics.inter_token.observe((now - prev).as_secs_f64()),
        }
        slot.last_token_at = Some(now);
        self.piece.clear();
        vocab.token_to_piece_into(token, &mut self.piece, false, None);
        let text = slot.utf8.push(&self.piece);
        let step = slot.stop.push(&text);
        if !step.emit.is_empty()
            && slot
                .job
                .events
                .send(Event::Text {
                    text: step.emit,
                    generated: slot.generated,
                    logprobs: std::mem::take(&mut slot.logprobs),
                })
                .is_err()
        {
            self.release(i, Outcome::Cancelled);
            return;
        }
        if step.stopped {
            self.finish(i, FinishReason::Stop);
        } else if slot.job.max_tokens.is_some_and(|m| slot.generated >= m)
            || slot.pos as u32 >= self.n_ctx_seq
        {
            self.finish(i, FinishReason::Length);
        } else {
            slot.next = Some(token);
        }
    }

    /// Flushes held-back text, frees the slot, then reports the end (metrics first, so a
    /// client that reads `/metrics` right after its response sees its own request counted).
    fn finish(&mut self, i: usize, reason: FinishReason) {
        let Some(mut slot) = self.release(i, Outcome::Ok) else {
            return;
        };
        let tail = slot.utf8.finish();
        let mut rest = slot.stop.push(&tail);
        let stopped = rest.stopped;
        if !stopped {
            rest.emit.push_str(&slot.stop.finish());
        }
        self.metrics
            .request_duration
            .observe(slot.job.arrived.elapsed().as_secs_f64());
        if !rest.emit.is_empty() || !slot.logprobs.is_empty() {
            let _ = slot.job.events.send(Event::Text {
                text: rest.emit,
                generated: slot.generated,
                logprobs: std::mem::take(&mut slot.logprobs),
            });
        }
        let reason = if stopped { FinishReason::Stop } else { reason };
        let _ = slot.job.events.send(Event::Done {
            reason,
            prompt_tokens: slot.job.prompt.len() as u32,
            completion_tokens: slot.generated,
        });
    }

    /// Takes sequence `i` out of the batch: clears its KV cells and counts its outcome.
    fn release(&mut self, i: usize, outcome: Outcome) -> Option<Slot> {
        let slot = self.slots[i].take()?;
        if self
            .ctx
            .clear_kv_cache_seq(Some(slot.seq as u32), None, None)
            .is_err()
        {
            tracing::warn!(seq = slot.seq, "could not clear the sequence's KV cache");
        }
        if outcome == Outcome::Cancelled {
            tracing::info!(
                seq = slot.seq,
                generated = slot.generated,
                "client went away; slot freed"
            );
        }
        self.metrics.request(outcome);
        self.metrics.set_active(self.active());
        Some(slot)
    }
}

/// One sampler chain per sequence: the grammar mask (llguidance) first, penalties, then greedy
/// or top-k / top-p / min-p / temperature / random draw.
fn build_sampler(
    s: &Sampling,
    grammar: Option<Box<Matcher>>,
    n_vocab: i32,
    n_ctx_seq: u32,
    eog: &[LlamaToken],
) -> LlamaSampler {
    let mut chain = Vec::with_capacity(8);
    // A grammar ends with end-of-sequence once it is complete, so `ignore_eos` cannot apply.
    let constrained = grammar.is_some();
    if let Some(m) = grammar {
        chain.push(LlamaSampler::from(*m));
    }
    if s.ignore_eos && !constrained && !eog.is_empty() {
        let bans: Vec<_> = eog
            .iter()
            .map(|t| LlamaLogitBias::new(*t, f32::NEG_INFINITY))
            .collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &bans));
    }
    if !s.penalties_off() {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            n_ctx_seq as i32,
            s.repetition_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(s.top_k));
        }
        if s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        if s.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(s.min_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        // u32::MAX is llama.cpp's "pick a random seed".
        chain.push(LlamaSampler::dist(s.seed.unwrap_or(u32::MAX)));
    }
    LlamaSampler::chain(chain, true)
}

/// The log-probability of `token` and the `top` most likely tokens, from the model's raw
/// logits at that step: a log-softmax before penalties, the grammar mask and temperature (the
/// model's own distribution, as OpenAI and vLLM report it).
pub fn token_logprob(
    logits: &[f32],
    token: usize,
    top: usize,
    piece: impl Fn(LlamaToken) -> Vec<u8>,
) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    let lp = |i: usize| (logits[i] - lse).min(0.0);
    let entry = |i: usize| {
        let bytes = piece(LlamaToken(i as i32));
        TopLogprob {
            token: String::from_utf8_lossy(&bytes).into_owned(),
            logprob: lp(i),
            bytes,
        }
    };
    // Top `top` by logit: a bounded insertion pass (top <= 5).
    let mut best: Vec<usize> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < top || l > logits[best[best.len() - 1]] {
                let at = best.partition_point(|&j| logits[j] >= l);
                best.insert(at, i);
                best.truncate(top);
            }
        }
    }
    let chosen = entry(token);
    TokenLogprob {
        token: chosen.token,
        logprob: chosen.logprob,
        bytes: chosen.bytes,
        top_logprobs: best.into_iter().map(entry).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_sorted_alternatives() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let piece = |t: LlamaToken| format!("t{}", t.0).into_bytes();
        let lp = token_logprob(&logits, 2, 3, piece);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((lp.logprob - (2.0f32.exp() / z).ln()).abs() < 1e-5);
        assert_eq!(lp.token, "t2");
        assert_eq!(lp.bytes, b"t2");
        let tops: Vec<&str> = lp.top_logprobs.iter().map(|t| t.token.as_str()).collect();
        assert_eq!(tops, ["t1", "t3", "t2"]);
        assert!(lp
            .top_logprobs
            .windows(2)
            .all(|w| w[0].logprob >= w[1].logprob));
        let total: f32 = (0..5)
            .map(|i| token_logprob(&logits, i, 0, piece).logprob.exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!(token_logprob(&logits, 4, 0, piece).top_logprobs.is_empty());
    }
}
