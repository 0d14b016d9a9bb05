//! Digests over HTTP: `GET /api/digests` (saved digests, newest first),
//! `GET /api/digests/{id}[?format=md|html|atom]`, `POST /api/digests` (admin; starts a
//! build on its own thread and answers 202 with a job id) and
//! `GET /api/digests/jobs/{job}` (its progress). One build at a time.
//!
//! The semantics are `overseer digest`'s: no window and not `all` covers what was
//! ingested since the last such digest (the watermark in `DATA_DIR/digests/`) and moves
//! the watermark on success; a window or `all` leaves it alone. Saved digests are only
//! ever opened through `store::load`, which refuses any id that could name a path.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;

use crate::api::blocking;
use overseer_rag::digest::{
    self, DigestOptions, DigestProgress, Format, Selection, SummaryCache, Watermark, store,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{Admin, ApiQuery};
use crate::backend::Digester;
use crate::error::{ApiError, BackendError};
use crate::security::ApiJson;
use crate::state::AppState;

/// Finished jobs remembered for polling (the oldest are forgotten first).
const KEEP_JOBS: usize = 32;
/// Most highlights a request may ask for.
const MAX_HIGHLIGHTS: usize = 50;
/// Longest title (characters).
const MAX_TITLE: usize = 200;

/// What `GET /api/digests/jobs/{job}` answers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct JobStatus {
    /// `running`, `done` or `failed`.
    state: &'static str,
    /// `selected`, `ranked` or `summarized`: the last stage reported.
    stage: &'static str,
    done: usize,
    total: usize,
    /// The saved digest's id, once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    /// What went wrong, once failed (safe for the client; details are in the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Default)]
struct Table {
    jobs: VecDeque<(String, JobStatus)>,
    /// The job now building, if any.
    running: Option<String>,
}

impl Table {
    fn get_mut(&mut self, id: &str) -> Option<&mut JobStatus> {
        self.jobs.iter_mut().find(|(j, _)| j == id).map(|(_, s)| s)
    }
}

/// The digest component of the state: the optional [`Digester`] and the job table.
#[derive(Clone, Default)]
pub(crate) struct DigestJobs {
    digester: Option<Arc<dyn Digester>>,
    table: Arc<Mutex<Table>>,
    next: Arc<AtomicU64>,
}

impl DigestJobs {
    pub fn new(digester: Option<Arc<dyn Digester>>) -> Self {
        DigestJobs {
            digester,
            ..DigestJobs::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a new running job, unless one is running already (`Err(its id)`).
    fn start(&self) -> Result<String, String> {
        let mut t = self.lock();
        if let Some(r) = &t.running {
            return Err(r.clone());
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = format!(
            "{stamp:x}-{}",
            self.next.fetch_add(1, Ordering::Relaxed) + 1
        );
        while t.jobs.len() >= KEEP_JOBS {
            t.jobs.pop_front();
        }
        t.jobs.push_back((
            id.clone(),
            JobStatus {
                state: "running",
                stage: "selected",
                done: 0,
                total: 0,
                digest: None,
                error: None,
            },
        ));
        t.running = Some(id.clone());
        Ok(id)
    }

    fn progress(&self, id: &str, p: &DigestProgress) {
        let (stage, done, total) = match *p {
            DigestProgress::Selected(n) => ("selected", n, n),
            DigestProgress::Ranked { done, total } => ("ranked", done, total),
            DigestProgress::Summarized { done, total } => ("summarized", done, total),
        };
        if let Some(s) = self.lock().get_mut(id) {
            s.stage = stage;
            s.done = done;
            s.total = total;
        }
    }

    /// Record the outcome of a job (once; later calls change nothing) and free the slot.
    fn finish(&self, id: &str, outcome: Result<String, String>) {
        let mut t = self.lock();
        if let Some(s) = t.get_mut(id)
            && s.state == "running"
        {
            match outcome {
                Ok(digest) => {
                    s.state = "done";
                    s.digest = Some(digest);
                }
                Err(e) => {
                    s.state = "failed";
                    s.error = Some(e);
                }
            }
        }
        if t.running.as_deref() == Some(id) {
            t.running = None;
        }
    }

    fn status(&self, id: &str) -> Option<JobStatus> {
        self.lock()
            .jobs
            .iter()
            .find(|(j, _)| j == id)
            .map(|(_, s)| s.clone())
    }
}

/// Marks its job failed if the build thread ends without reporting (a panic).
struct FinishGuard {
    jobs: DigestJobs,
    id: String,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.jobs.finish(
            &self.id,
            Err("the digest job stopped unexpectedly; the server log has the details".into()),
        );
    }
}

/// A validated `POST /api/digests`.
#[derive(Debug, Clone)]
struct Plan {
    selection: Selection,
    /// Cover what was ingested since the last watermark, and move it.
    watermark: bool,
    opts: DigestOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DigestRequest {
    since: Option<String>,
    until: Option<String>,
    week: Option<String>,
    all: Option<bool>,
    summaries: Option<bool>,
    highlights: Option<usize>,
    title: Option<String>,
}

fn given(s: Option<&String>) -> Option<&str> {
    s.map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn date(s: &str, field: &str) -> Result<NaiveDate, ApiError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
        ApiError::bad_request(format!("\"{field}\" takes a date as YYYY-MM-DD, not {s:?}"))
    })
}

/// Monday and Sunday of an ISO week written `YYYY-Www`.
fn week(s: &str) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "\"week\" takes an ISO week as YYYY-Www (e.g. 2026-W49), not {s:?}"
        ))
    };
    let (y, w) = s.split_once("-W").ok_or_else(bad)?;
    if y.len() != 4 || !(1..=2).contains(&w.len()) {
        return Err(bad());
    }
    let y: i32 = y.parse().map_err(|_| bad())?;
    let w: u32 = w.parse().map_err(|_| bad())?;
    let mon = NaiveDate::from_isoywd_opt(y, w, chrono::Weekday::Mon).ok_or_else(bad)?;
    let sun = NaiveDate::from_isoywd_opt(y, w, chrono::Weekday::Sun).ok_or_else(bad)?;
    Ok((mon, sun))
}

fn plan(req: &DigestRequest) -> Result<Plan, ApiError> {
    let (since, until, wk) = (
        given(req.since.as_ref()),
        given(req.until.as_ref()),
        given(req.week.as_ref()),
    );
    let all = req.all.unwrap_or(false);
    if wk.is_some() && (since.is_some() || until.is_some()) {
        return Err(ApiError::bad_request(
            "send either \"week\" or \"since\"/\"until\", not both",
        ));
    }
    if all && (wk.is_some() || since.is_some() || until.is_some()) {
        return Err(ApiError::bad_request(
            "\"all\" covers every item: send no \"week\", \"since\" or \"until\" with it",
        ));
    }
    let mut selection = Selection::default();
    if let Some(w) = wk {
        let (mon, sun) = week(w)?;
        selection.since = Some(mon);
        selection.until = Some(sun);
    }
    if let Some(s) = since {
        selection.since = Some(date(s, "since")?);
    }
    if let Some(u) = until {
        selection.until = Some(date(u, "until")?);
    }
    if let (Some(s), Some(u)) = (selection.since, selection.until)
        && s > u
    {
        return Err(ApiError::bad_request(format!(
            "the window is empty: since {s} is after until {u}"
        )));
    }
    let highlights = req.highlights.unwrap_or(3);
    if highlights > MAX_HIGHLIGHTS {
        return Err(ApiError::bad_request(format!(
            "\"highlights\" must be at most {MAX_HIGHLIGHTS}, not {highlights}"
        )));
    }
    let mut opts = DigestOptions {
        summaries: req.summaries.unwrap_or(true),
        highlights,
        ..DigestOptions::default()
    };
    if let Some(t) = given(req.title.as_ref()) {
        if t.chars().count() > MAX_TITLE || t.chars().any(char::is_control) {
            return Err(ApiError::bad_request(format!(
                "\"title\" must be one line of at most {MAX_TITLE} characters"
            )));
        }
        opts.title = t.to_string();
    }
    let watermark = !all && selection.since.is_none() && selection.until.is_none();
    Ok(Plan {
        selection,
        watermark,
        opts,
    })
}

fn store_error(e: overseer_rag::Error) -> BackendError {
    BackendError::Internal(e.to_string())
}

/// `GET /api/digests`: `{"digests": [{id, title, created, covers, items}]}`, newest first.
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let dir = state.config.data_dir.clone();
    let list = blocking(move || store::list(&dir).map_err(store_error)).await?;
    Ok(Json(json!({ "digests": list })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DigestQuery {
    format: Option<String>,
}

/// `GET /api/digests/{id}`: the digest as JSON, or rendered (`?format=md|html|atom`).
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DigestQuery>,
) -> Result<Response, ApiError> {
    let format = match q.format.as_deref().map(str::trim) {
        None | Some("" | "json") => None,
        Some("md" | "markdown") => Some(Format::Markdown),
        Some("html") => Some(Format::Html),
        Some("atom") => Some(Format::Atom),
        Some(f) => {
            return Err(ApiError::bad_request(format!(
                "format must be json, md, html or atom, not {f:?}"
            )));
        }
    };
    if !store::valid_id(&id) {
        return Err(ApiError::not_found("no such digest"));
    }
    let dir = state.config.data_dir.clone();
    let Some(d) = blocking(move || store::load(&dir, &id).map_err(store_error)).await? else {
        return Err(ApiError::not_found("no such digest"));
    };
    let Some(format) = format else {
        return Ok(Json(d).into_response());
    };
    let text = digest::render(&d, format);
    let resp = match format {
        Format::Html => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                // The page is standalone (inline style, no script); nothing in it may
                // run or load anything in our origin.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; sandbox",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
            ],
            text,
        )
            .into_response(),
        Format::Atom => (
            [
                (header::CONTENT_TYPE, "application/atom+xml; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            text,
        )
            .into_response(),
        Format::Markdown | Format::Json => (
            [
                (header::CONTENT_TYPE, "text/markdown; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            text,
        )
            .into_response(),
    };
    Ok(resp)
}

/// `POST /api/digests` (admin): validate, start the build on its own thread, answer 202
/// with `{"job": id}`.
pub(crate) async fn create(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DigestRequest>,
) -> Result<Response, ApiError> {
    let plan = plan(&req)?;
    let jobs = state.digests.clone();
    let Some(digester) = jobs.digester.clone() else {
        return Err(ApiError::unavailable(
            "this server cannot make digests (it was started without the literature index)",
        ));
    };
    if plan.opts.summaries && !digester.summarizes() {
        return Err(ApiError::unavailable(
            "no model is loaded on this server, so it cannot write summaries: send \
             \"summaries\": false",
        ));
    }
    let id = jobs.start().map_err(|running| {
        ApiError::new(
            StatusCode::CONFLICT,
            "digest_running",
            format!(
                "a digest is already being made (job {running}); wait for it to finish, then retry"
            ),
        )
    })?;
    let data_dir = state.config.data_dir.clone();
    let (jobs2, id2) = (jobs.clone(), id.clone());
    let spawned = std::thread::Builder::new()
        .name("digest".into())
        .spawn(move || run(jobs2, id2, digester.as_ref(), data_dir, plan));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the digest thread");
        jobs.finish(&id, Err("cannot start the digest job".into()));
        return Err(ApiError::internal());
    }
    tracing::info!(job = %id, "digest job started");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/digests/jobs/{id}"))],
        Json(json!({ "job": id })),
    )
        .into_response())
}

/// Build, save and (in watermark mode) move the watermark; record the outcome.
fn run(jobs: DigestJobs, id: String, digester: &dyn Digester, data_dir: PathBuf, plan: Plan) {
    let guard = FinishGuard {
        jobs: jobs.clone(),
        id: id.clone(),
    };
    let outcome = (|| -> Result<String, BackendError> {
        let sequence = digester.sequence()?;
        let mut selection = plan.selection.clone();
        if plan.watermark
            && let Some(w) = store::read_watermark(&data_dir).map_err(store_error)?
        {
            selection.from_sequence = Some(w.sequence);
        }
        let mut cache = if plan.opts.summaries {
            Some(SummaryCache::open(&data_dir).map_err(store_error)?)
        } else {
            None
        };
        let mut d = digester.build(&selection, &plan.opts, cache.as_mut(), &mut |p| {
            jobs.progress(&id, &p);
        })?;
        store::save(&data_dir, &mut d).map_err(store_error)?;
        if plan.watermark {
            store::write_watermark(
                &data_dir,
                &Watermark {
                    sequence,
                    digest: d.id.clone(),
                },
            )
            .map_err(store_error)?;
        }
        Ok(d.id)
    })();
    match outcome {
        Ok(digest) => {
            tracing::info!(job = %id, %digest, "digest saved");
            jobs.finish(&id, Ok(digest));
        }
        // The client sees what ApiError would send; internals go to the log only.
        Err(e) => jobs.finish(&id, Err(ApiError::from(e).message)),
    }
    drop(guard);
}

/// `GET /api/digests/jobs/{job}`: the job's state and progress.
pub(crate) async fn job(
    State(state): State<AppState>,
    Path(job): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    match state.digests.status(&job) {
        Some(s) => Ok(Json(s)),
        None => Err(ApiError::not_found("no such digest job")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> DigestRequest {
        serde_json::from_value(v).expect("request")
    }

    #[test]
    fn plans_follow_the_cli() {
        let p = plan(&req(json!({}))).expect("plan");
        assert!(p.watermark && p.opts.summaries && p.opts.highlights == 3);
        let p = plan(&req(json!({"all": true, "summaries": false}))).expect("plan");
        assert!(!p.watermark && !p.opts.summaries);
        assert!(p.selection.since.is_none());
        let p = plan(&req(json!({"week": "2026-W49"}))).expect("plan");
        assert!(!p.watermark);
        assert_eq!(
            p.selection.since.map(|d| d.to_string()).as_deref(),
            Some("2026-11-30")
        );
        assert_eq!(
            p.selection.until.map(|d| d.to_string()).as_deref(),
            Some("2026-12-06")
        );
        let p = plan(&req(json!({"since": "2020-01-01", "title": " Weekly "}))).expect("plan");
        assert!(!p.watermark && p.opts.title == "Weekly");
        // Empty strings are absent (what a form sends).
        assert!(
            plan(&req(json!({"since": "", "week": ""})))
                .expect("plan")
                .watermark
        );
        for bad in [
            json!({"week": "2026-49"}),
            json!({"week": "2026-W54"}),
            json!({"week": "2026-W1x"}),
            json!({"since": "2020-13-01"}),
            json!({"since": "yesterday"}),
            json!({"since": "2020-02-01", "until": "2020-01-01"}),
            json!({"week": "2026-W01", "since": "2026-01-01"}),
            json!({"all": true, "until": "2026-01-01"}),
            json!({"highlights": 500}),
            json!({"title": "a\nb"}),
        ] {
            assert!(plan(&req(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_job_at_a_time_and_the_slot_is_freed() {
        let jobs = DigestJobs::new(None);
        let a = jobs.start().expect("first");
        assert_eq!(jobs.start(), Err(a.clone()));
        jobs.progress(&a, &DigestProgress::Ranked { done: 2, total: 5 });
        let s = jobs.status(&a).expect("status");
        assert_eq!(
            (s.state, s.stage, s.done, s.total),
            ("running", "ranked", 2, 5)
        );
        jobs.finish(&a, Ok("d1".into()));
        // A later report (the panic guard) changes nothing.
        jobs.finish(&a, Err("late".into()));
        let s = jobs.status(&a).expect("status");
        assert_eq!(
            (s.state, s.digest.as_deref(), s.error),
            ("done", Some("d1"), None)
        );
        let b = jobs.start().expect("second");
        assert_ne!(a, b);
        drop(FinishGuard {
            jobs: jobs.clone(),
            id: b.clone(),
        });
        assert_eq!(jobs.status(&b).expect("status").state, "failed");
        assert!(jobs.start().is_ok());
    }
}
