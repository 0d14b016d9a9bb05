//! One model, many users: a dedicated OS thread owns the [`Generator`] and runs one job at
//! a time from a bounded queue. A full queue is refused at once (the handler answers 503
//! with `Retry-After`) instead of letting requests pile up. Each job carries a cancel
//! flag; the HTTP side sets it when the client disconnects (the response stream is
//! dropped), and the generator's callbacks see it and stop the generation.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::backend::{AskEvent, AskParams, ChatOutput, ChatParams, Generator};
use crate::error::{BackendError, Error, Result};
use crate::metrics::Metrics;

/// What a job asks the model to do.
#[derive(Debug)]
pub(crate) enum JobKind {
    Ask(AskParams),
    Chat(ChatParams),
}

/// Messages from the worker to the request that submitted the job.
#[derive(Debug)]
pub(crate) enum WorkerEvent {
    Ask(AskEvent),
    Text(String),
    ChatDone(ChatOutput),
    Failed(BackendError),
}

struct Job {
    kind: JobKind,
    events: UnboundedSender<WorkerEvent>,
    cancel: Arc<AtomicBool>,
}

/// Sets the cancel flag when dropped: held by the response stream, so a client that goes
/// away (hyper drops the body) cancels its generation.
#[derive(Debug)]
pub(crate) struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A submitted job: its event stream and the guard that cancels it.
pub(crate) struct Ticket {
    pub events: UnboundedReceiver<WorkerEvent>,
    pub cancel: CancelOnDrop,
}

/// Why a job was not accepted.
#[derive(Debug, PartialEq)]
pub(crate) enum SubmitError {
    QueueFull,
    Stopped,
}

/// Handle to the worker thread.
pub(crate) struct Worker {
    tx: SyncSender<Job>,
    model_name: String,
    metrics: Metrics,
}

impl Worker {
    /// Start the worker thread with room for `capacity` waiting jobs.
    pub fn start(
        mut generator: Box<dyn Generator>,
        capacity: usize,
        metrics: Metrics,
    ) -> Result<Worker> {
        let (tx, rx) = sync_channel::<Job>(capacity.max(1));
        let model_name = generator.model_name();
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("overseer-generate".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    m.queue_depth.dec();
                    run_job(generator.as_mut(), job, &m);
                }
            })
            .map_err(|e| Error::Worker(e.to_string()))?;
        Ok(Worker {
            tx,
            model_name,
            metrics,
        })
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// Queue a job, or refuse at once when the queue is full.
    pub fn submit(&self, kind: JobKind) -> Result<Ticket, SubmitError> {
        let (events_tx, events_rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            kind,
            events: events_tx,
            cancel: cancel.clone(),
        };
        // Count before sending so the worker's decrement never goes below zero.
        self.metrics.queue_depth.inc();
        match self.tx.try_send(job) {
            Ok(()) => Ok(Ticket {
                events: events_rx,
                cancel: CancelOnDrop(cancel),
            }),
            Err(e) => {
                self.metrics.queue_depth.dec();
                match e {
                    TrySendError::Full(_) => {
                        self.metrics.rejected_queue_full.inc();
                        Err(SubmitError::QueueFull)
                    }
                    TrySendError::Disconnected(_) => Err(SubmitError::Stopped),
                }
            }
        }
    }
}

fn run_job(generator: &mut dyn Generator, job: Job, metrics: &Metrics) {
    let Job {
        kind,
        events,
        cancel,
    } = job;
    let kind_name = match kind {
        JobKind::Ask(_) => "ask",
        JobKind::Chat(_) => "chat",
    };
    if cancel.load(Ordering::SeqCst) {
        // The client left while the job was waiting.
        metrics.record_job(kind_name, "cancelled", 0, 0.0);
        return;
    }
    let start = Instant::now();
    let mut tokens = 0u64;
    // Stop when the client is gone: either the flag is set or the receiver was dropped.
    let alive = |cancel: &AtomicBool, events: &UnboundedSender<WorkerEvent>| {
        !cancel.load(Ordering::SeqCst) && !events.is_closed()
    };
    let result = match kind {
        JobKind::Ask(p) => generator
            .ask(&p, &mut |ev| {
                if matches!(ev, AskEvent::Token(_)) {
                    tokens += 1;
                }
                if !alive(&cancel, &events) || events.send(WorkerEvent::Ask(ev)).is_err() {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })
            .map(|()| None),
        JobKind::Chat(p) => generator
            .chat(&p, &mut |text| {
                tokens += 1;
                if !alive(&cancel, &events)
                    || events.send(WorkerEvent::Text(text.to_string())).is_err()
                {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })
            .map(Some),
    };
    let secs = start.elapsed().as_secs_f64();
    let cancelled = !alive(&cancel, &events);
    let outcome = match (&result, cancelled) {
        (_, true) => "cancelled",
        (Ok(_), false) => "ok",
        (Err(_), false) => "error",
    };
    metrics.record_job(kind_name, outcome, tokens, secs);
    tracing::debug!(
        kind = kind_name,
        outcome,
        tokens,
        secs,
        "generation job finished"
    );
    match result {
        Ok(Some(out)) => {
            let _ = events.send(WorkerEvent::ChatDone(out));
        }
        Ok(None) => {}
        Err(e) => {
            let _ = events.send(WorkerEvent::Failed(e));
        }
    }
}
