//! The shared state of the router: configuration, back ends, the generation worker,
//! metrics and the rate limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::{Digester, Generator, Literature};
use crate::config::ServerConfig;
use crate::digest::DigestJobs;
use crate::error::Result;
use crate::lab::LabRuns;
use crate::metrics::Metrics;
use crate::security::RateLimit;
use crate::worker::Worker;

/// Everything a handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) literature: Arc<dyn Literature>,
    pub(crate) worker: Option<Arc<Worker>>,
    pub(crate) metrics: Metrics,
    pub(crate) rate_limit: Option<Arc<RateLimit>>,
    pub(crate) lab: LabRuns,
    pub(crate) digests: DigestJobs,
    ready: Arc<AtomicBool>,
}

impl AppState {
    /// Build the state and start the generation worker (when a generator is given; without
    /// one, `/api/ask` and `/v1/chat/completions` answer 503). Starts ready.
    pub fn new(
        config: ServerConfig,
        literature: Arc<dyn Literature>,
        generator: Option<Box<dyn Generator>>,
    ) -> Result<AppState> {
        let metrics = Metrics::new();
        let worker = match generator {
            Some(g) => Some(Arc::new(Worker::start(
                g,
                config.queue_capacity,
                metrics.clone(),
            )?)),
            None => None,
        };
        Ok(AppState {
            rate_limit: RateLimit::new(config.rate_per_sec, config.rate_burst),
            lab: LabRuns::new(&config.data_dir, &config.lab_roots),
            digests: DigestJobs::new(None),
            config: Arc::new(config),
            literature,
            worker,
            metrics,
            ready: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Let `POST /api/digests` make digests with `digester` (without one it answers
    /// 503; saved digests are listed and served either way).
    pub fn with_digester(mut self, digester: Arc<dyn Digester>) -> AppState {
        self.digests = DigestJobs::new(Some(digester));
        self
    }

    /// Mark the server (not) ready; `/healthz` answers 503 while not ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
