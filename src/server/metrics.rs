//! `GET /metrics`: counters, gauges and histograms in Prometheus's text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::engine::EngineStats;
use crate::generate::Summary;

/// A histogram with fixed upper bounds.
struct Histogram {
    bounds: &'static [f64],
    state: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, state: Mutex::new((vec![0; bounds.len()], 0.0, 0)) }
    }

    fn observe(&self, v: f64) {
        if let Ok(mut s) = self.state.lock() {
            for (i, &b) in self.bounds.iter().enumerate() {
                if v <= b {
                    s.0[i] += 1;
                }
            }
            s.1 += v;
            s.2 += 1;
        }
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let Ok(s) = self.state.lock() else { return };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, n) in self.bounds.iter().zip(&s.0) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", s.2, s.1, s.2);
    }
}

/// What the server counts beside the engine's own statistics.
pub(crate) struct Metrics {
    pub(crate) chat: AtomicU64,
    pub(crate) completions: AtomicU64,
    pub(crate) embeddings: AtomicU64,
    pub(crate) rejected: AtomicU64,
    ttft: Histogram,
    decode: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            chat: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            embeddings: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            ttft: Histogram::new(&[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            decode: Histogram::new(&[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
        }
    }

    /// Records a finished generation.
    pub(crate) fn finished(&self, s: &Summary) {
        if s.generated_tokens > 0 {
            self.ttft.observe(s.time_to_first_token.as_secs_f64());
        }
        if s.generated_tokens > 1 {
            self.decode.observe(s.decode_tokens_per_s);
        }
    }

    pub(crate) fn render(&self, e: &EngineStats) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(
            out,
            "# HELP rocm_llama_requests_total Requests by route.\n# TYPE rocm_llama_requests_total counter"
        );
        for (route, n) in
            [("chat_completions", &self.chat), ("completions", &self.completions), ("embeddings", &self.embeddings)]
        {
            let _ = writeln!(out, "rocm_llama_requests_total{{route=\"{route}\"}} {}", n.load(Ordering::Relaxed));
        }
        counter(
            &mut out,
            "rocm_llama_requests_rejected_total",
            "Requests answered 503 (queue full).",
            self.rejected.load(Ordering::Relaxed),
        );
        counter(&mut out, "rocm_llama_requests_completed_total", "Generations finished (any reason).", e.completed);
        counter(&mut out, "rocm_llama_generated_tokens_total", "Tokens generated.", e.generated_tokens);
        counter(&mut out, "rocm_llama_prompt_tokens_total", "Prompt tokens computed.", e.prompt_tokens_computed);
        counter(
            &mut out,
            "rocm_llama_prompt_tokens_cached_total",
            "Prompt tokens not computed: reused from the request's own slot or copied from another.",
            e.prompt_tokens_cached,
        );
        counter(
            &mut out,
            "rocm_llama_prompt_tokens_shared_total",
            "Of the cached prompt tokens, those copied from another slot.",
            e.prompt_tokens_shared,
        );
        counter(&mut out, "rocm_llama_prefix_copies_total", "Prompt prefixes copied between slots.", e.prefix_copies);
        counter(
            &mut out,
            "rocm_llama_prefix_waits_total",
            "Requests that waited for another slot to compute the prefix they share.",
            e.prefix_waits,
        );
        counter(&mut out, "rocm_llama_texts_embedded_total", "Texts embedded.", e.texts_embedded);
        counter(
            &mut out,
            "rocm_llama_draft_tokens_total",
            "Tokens guessed by speculative decoding and decoded for checking.",
            e.draft_tokens,
        );
        counter(
            &mut out,
            "rocm_llama_draft_tokens_accepted_total",
            "Of the guessed tokens, those the model's own picks confirmed.",
            e.draft_tokens_accepted,
        );
        gauge(&mut out, "rocm_llama_requests_running", "Generations in slots now.", e.running as f64);
        gauge(&mut out, "rocm_llama_queue_depth", "Requests waiting for a slot.", e.queued as f64);
        gauge(&mut out, "rocm_llama_kv_cells_used", "KV cells held by running generations.", e.kv_cells_used as f64);
        gauge(&mut out, "rocm_llama_kv_cells_cached", "KV cells kept for prefix reuse.", e.kv_cells_cached as f64);
        self.ttft.write(&mut out, "rocm_llama_time_to_first_token_seconds", "Time to first token.");
        self.decode.write(&mut out, "rocm_llama_decode_tokens_per_second", "Decode rate of each generation.");
        out
    }
}
