//! `serve`: the OpenAI-compatible HTTP API (`rocm_llama::server`) on an engine, until Ctrl-C
//! or SIGTERM, after which requests in flight get a bounded time to finish.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rocm_llama::server::{router, ConnectionLimits, ServerConfig};
use rocm_llama::{Engine, EngineConfig, FlashAttention, Pooling};

use crate::options::{load_model, model_path, AdapterArgs, ContextPlan, FaArg, KvArg, ModelArgs, SpeculationArgs};
use crate::{AnyResult, UserError};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapters: AdapterArgs,
    #[command(flatten)]
    speculation: SpeculationArgs,
    /// The most tokens a decode step holds with speculative guesses: they share what the
    /// running sequences' decode tokens leave, so a full batch has none.
    #[arg(long, value_name = "N", default_value_t = 32)]
    spec_step_tokens: usize,
    /// Load the --lora adapters at scale 0: requests (their `lora` field) or POST
    /// /lora-adapters turn them on.
    #[arg(long)]
    lora_init_without_apply: bool,
    /// Address to listen on. Anything but loopback exposes the API to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests decoded together (slots).
    #[arg(long = "parallel", visible_alias = "np", default_value_t = 8)]
    parallel: u32,
    /// Context length of each slot in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    ctx_size: u32,
    /// Token budget of one engine step (decode tokens plus prompt chunks).
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    batch_size: u32,
    /// Requests that may wait for a slot; beyond them requests get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// One KV buffer for all slots (llama.cpp's `--kv-unified`): a prefix shared between slots
    /// is shared without a copy, but attention over many unrelated requests reads slower.
    #[arg(long = "kv-unified", visible_alias = "kvu")]
    kv_unified: bool,
    /// Each request reuses only what its own slot holds: no prefix copied from another slot,
    /// no waiting for one that another request is computing.
    #[arg(long)]
    no_prefix_sharing: bool,
    /// Every request gets exactly the tokens it would get alone, whatever else is being
    /// served: each sequence decodes in a batch of its own, and prompt prefixes are reused
    /// only in whole batches of cells computed as a prompt. Costs the throughput batching gives.
    #[arg(long)]
    reproducible: bool,
    /// Folder for slot files: `POST /slots/{id}?action=save|restore` (as llama-server's
    /// --slot-save-path) keep a slot's KV state there (made if missing).
    #[arg(long, value_name = "DIR")]
    slot_save_path: Option<std::path::PathBuf>,
    /// Require `Authorization: Bearer KEY` on every /v1 route (or set ROCM_LLAMA_API_KEY).
    #[arg(long, env = "ROCM_LLAMA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model id responses name [default: the file name without .gguf]; requests may
    /// name any model.
    #[arg(short = 'a', long)]
    alias: Option<String>,
    /// How chat requests are rendered: a Jinja template file, or a built-in format's name
    /// [default: the model's own template].
    #[arg(long, value_name = "FILE|NAME")]
    chat_template: Option<String>,
    /// Template variables every chat request gets, as a JSON object (a request's own
    /// chat_template_kwargs override them).
    #[arg(long, value_name = "JSON")]
    chat_template_kwargs: Option<String>,
    /// K cache type (-ctk).
    #[arg(long, value_enum, default_value_t = KvArg::F16)]
    cache_type_k: KvArg,
    /// V cache type (-ctv).
    #[arg(long, value_enum, default_value_t = KvArg::F16)]
    cache_type_v: KvArg,
    /// Accepted for llama-server's command lines: Jinja templates are always used.
    #[arg(long, hide = true)]
    jinja: bool,
    /// Accepted for llama-server's command lines: /v1/embeddings is always served.
    #[arg(long, visible_alias = "embedding", hide = true)]
    embeddings: bool,
    /// Accepted for llama-server's command lines: /metrics is always served.
    #[arg(long, hide = true)]
    metrics: bool,
    /// Accepted for llama-server's command lines (-cb): batching is always continuous.
    #[arg(long, hide = true)]
    cont_batching: bool,
    /// Refused: batching is always continuous here.
    #[arg(long, hide = true)]
    no_cont_batching: bool,
    /// Pooling for /v1/embeddings: model (the model's own), mean, cls, last, rank.
    #[arg(long, default_value = "model")]
    pooling: Pooling,
    /// Flash attention.
    #[arg(long = "flash-attn", short = 'f', value_enum, default_value_t = FaArg::Auto)]
    flash_attn: FaArg,
    /// Seconds requests in flight may take to finish after Ctrl-C or SIGTERM.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Connections open at once; more are closed as they arrive.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers (and the longest an idle
    /// connection stays open); a request's body gets twice as long.
    #[arg(long = "timeout", visible_alias = "to", default_value_t = 30)]
    timeout: u64,
}

pub fn serve(mut args: ServeArgs) -> AnyResult<()> {
    // The warm-up is the engine's (EngineConfig::warmup), not the load's.
    let warmup = !std::mem::take(&mut args.model.no_warmup);
    if args.no_cont_batching {
        return Err(UserError::boxed("--no-cont-batching (-nocb): batching is always continuous here"));
    }
    let chat_template = crate::generate::chat_template(args.chat_template.clone())?;
    let chat_kwargs = crate::generate::chat_options(args.chat_template_kwargs.as_deref())?.kwargs;
    if matches!(chat_template, rocm_llama::ChatTemplate::Builtin(_)) && !chat_kwargs.is_empty() {
        return Err(UserError::boxed(
            "--chat-template-kwargs: a built-in format takes no template variables (give a Jinja template file)",
        ));
    }
    let path = model_path(args.model.model.as_deref())?;
    let name = args.alias.clone().unwrap_or_else(|| {
        path.file_name().map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string()).unwrap_or_default()
    });
    // The fit plans for the engine's real KV cache: every slot's cells, with the flash
    // attention setting it will use (auto counted as off: the larger estimate).
    let total_ctx = args
        .ctx_size
        .checked_mul(args.parallel)
        .ok_or_else(|| UserError::boxed("--parallel x --ctx-size overflows"))?;
    let plan = ContextPlan {
        n_ctx: Some(total_ctx),
        max_ctx: total_ctx,
        n_seq: args.parallel,
        flash_attention: matches!(args.flash_attn, FaArg::On),
        type_k: args.cache_type_k.into(),
        type_v: args.cache_type_v.into(),
    };
    let (model, _) = load_model(&args.model, Some(plan))?;
    let model = Arc::new(model);
    let speculation = args.speculation.speculation(&model)?;
    let (mut lora, control_vector) = args.adapters.load(&model)?;
    if args.lora_init_without_apply {
        lora.iter_mut().for_each(|(_, scale)| *scale = 0.0);
    }
    let fa: FlashAttention = args.flash_attn.into();
    let mut engine_config = EngineConfig::default();
    engine_config.control_vector = control_vector;
    if let Some(rocm_llama::Speculation::Draft { draft, .. }) = &speculation {
        engine_config.draft = Some(draft.clone());
    }
    let engine = Engine::start(
        model,
        engine_config
            .n_seq_max(args.parallel)
            .n_ctx_per_seq(args.ctx_size)
            .n_batch(args.batch_size)
            .queue_capacity(args.queue)
            .threads(args.model.threads)
            .flash_attention(fa)
            .kv_unified(args.kv_unified)
            .prefix_sharing(!args.no_prefix_sharing)
            .reproducible(args.reproducible)
            .draft_step_tokens(args.spec_step_tokens)
            .type_k(args.cache_type_k.into())
            .type_v(args.cache_type_v.into())
            .warmup(warmup),
    )?;
    if let Some(dir) = &args.slot_save_path {
        std::fs::create_dir_all(dir)
            .map_err(|e| UserError::boxed(format!("--slot-save-path {}: {e}", dir.display())))?;
    }
    let config = ServerConfig::default()
        .model_name(name.clone())
        .api_key(args.api_key.clone())
        .pooling(args.pooling)
        .slot_save_path(args.slot_save_path.clone())
        .chat_template(chat_template)
        .chat_template_kwargs(chat_kwargs)
        .lora(lora)
        .speculation(speculation);
    let app = router(engine.clone(), config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| UserError::boxed(format!("cannot start the async runtime: {e}")))?;
    let addr = format!("{}:{}", args.host, args.port);
    let drain = Duration::from_secs(args.drain_timeout);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| UserError::boxed(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr.clone());
        let loopback = listener.local_addr().map(|a| a.ip().is_loopback()).unwrap_or(false);
        eprintln!(
            "serving {name} on http://{local}/v1 ({} slots of {} tokens, queue {}{})",
            args.parallel,
            args.ctx_size,
            args.queue,
            if args.api_key.is_some() { ", API key required" } else { "" }
        );
        if !loopback && args.api_key.is_none() {
            eprintln!(
                "warning: listening beyond this machine without --api-key: anyone who can reach {local} can use it"
            );
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // The first Ctrl-C or SIGTERM drains; a second ends the process at once.
        let (signal_tx, mut signal_rx) = tokio::sync::watch::channel(false);
        crate::signals::on_signal(move |signal| {
            if signal_tx.send_replace(true) {
                return crate::signals::default_exit(signal);
            }
            crate::signals::Action::Handled
        });
        let limits = ConnectionLimits::default()
            .max_connections(args.max_connections)
            .header_timeout(Duration::from_secs(args.timeout.max(1)))
            .body_timeout(Duration::from_secs(args.timeout.max(1) * 2));
        let server = rocm_llama::server::serve(listener, app, limits, {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|&s| s).await;
            }
        });
        let mut server = std::pin::pin!(server);
        tokio::select! {
            r = &mut server => return r.map_err(|e| UserError::boxed(format!("server: {e}"))),
            _ = signal_rx.wait_for(|&s| s) => {}
        }
        eprintln!(
            "stopping: no new connections; {}s for requests in flight (Ctrl-C again to stop now)",
            drain.as_secs()
        );
        let _ = stop_tx.send(true);
        if tokio::time::timeout(drain, &mut server).await.is_err() {
            eprintln!("requests still running after {}s: cancelling them", drain.as_secs());
        }
        engine.shutdown();
        Ok(())
    })
}
