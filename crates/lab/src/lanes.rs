//! Independent forward passes side by side, one per core ("lanes").
//!
//! Why: on a machine with few cores, one pass split over every core spends much of
//! its time keeping the cores in step. Each matmul and each element-wise op is cut in
//! per-core pieces and every core waits at a barrier for the slowest one, thousands of
//! times per pass. The lab's calls are made of independent batches: the rows of two
//! batches never meet. Running one batch per core, each on a single thread with its
//! own copy of the hook, removes those barriers altogether.
//!
//! Measured on a 2-core Xeon (docs/BENCHMARKS.md, "Refusal lab"): two single-thread
//! prompt passes side by side gave 30 prompts/s, against 22 for one pass on both
//! cores. Greedy decoding of 64-row batches gave 1.33x the tokens per second.
//!
//! A lane is a one-thread rayon pool: the model's kernels (`Model::forward` runs in the
//! caller's pool when called from one) and the AMX matmuls stay on that thread.
//! candle's own element-wise ops run on its global barrier pool. With several lanes
//! that pool should have no workers of its own (`CANDLE_NUM_THREADS=1`, which the CLI
//! sets for refusal commands). Otherwise the lanes queue on its lock: results stay
//! the same but the lanes run slower.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use overseer_lm::Hook;

use crate::runner::reborrow;
use crate::{Error, Result};

/// How to cut `n` items into batches of at most `batch` so that `lanes` lanes get the
/// same number of batches: the batch count is rounded up to a multiple of `lanes`
/// and the items spread evenly. 41 prompts, batch 16, 2 lanes: 4 batches of 11/10,
/// not 16/16/9 (which would leave one lane idle for the last batch). Returns the
/// batch size (≥ 1).
pub(crate) fn lane_batch(n: usize, batch: usize, lanes: usize) -> usize {
    let batch = batch.max(1);
    let lanes = lanes.max(1);
    if lanes == 1 || n == 0 {
        return batch;
    }
    let count = n.div_ceil(batch).next_multiple_of(lanes);
    n.div_ceil(count).max(1)
}

/// Cut prompts of `lens` (sorted ascending) into at most `count` runs of consecutive
/// prompts, each of at most `max_rows`, such that the largest run cost is as small as
/// a greedy cut can make it. A run costs `rows × its longest prompt`: the padded tokens
/// a prompt pass computes. With one batch per lane, equal-row batches of length-sorted
/// prompts leave the lane with the short prompts idle while the other finishes the
/// long ones; equal-cost batches give the short end more rows.
///
/// `count` below `lens.len().div_ceil(max_rows)` is raised to it. Returns the runs'
/// lengths (summing to `lens.len()`).
pub(crate) fn balanced_runs(lens: &[usize], max_rows: usize, count: usize) -> Vec<usize> {
    let max_rows = max_rows.max(1);
    let count = count.max(lens.len().div_ceil(max_rows)).max(1);
    // Greedy cut under cost bound `c`: runs, or None if more than `count` are needed.
    let cut = |c: usize| -> Option<Vec<usize>> {
        let mut runs = Vec::new();
        let mut rows = 0usize;
        for &len in lens {
            if rows > 0 && (rows == max_rows || (rows + 1) * len > c) {
                runs.push(rows);
                rows = 0;
                if runs.len() == count {
                    return None;
                }
            }
            rows += 1;
        }
        if rows > 0 {
            runs.push(rows);
        }
        Some(runs)
    };
    let longest = lens.last().copied().unwrap_or(0).max(1);
    // Any bound is at least the longest prompt; `max_rows × longest` always fits
    // `count ≥ n / max_rows` runs.
    let (mut lo, mut hi) = (longest, max_rows * longest);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if cut(mid).is_some() {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    cut(lo).expect("the upper bound always fits")
}

/// Run `job` on every item of `work`, with `hook` (or a copy of it), up to `lanes`
/// items at a time, each lane on one thread. Results come back in `work`'s order.
///
/// Falls back to one item at a time with `hook` itself when `lanes < 2`, when there
/// is only one item, or when the hook cannot be copied ([`Hook::fork`] returns
/// `None`, as captures do). The first error stops the lanes from taking new items
/// and is returned.
///
/// Errors: [`Error::Threads`] if a lane's thread cannot be started; whatever `job`
/// returns.
pub(crate) fn in_lanes<W, T>(
    lanes: usize,
    work: &[W],
    hook: Option<&mut dyn Hook>,
    job: impl Fn(&W, Option<&mut dyn Hook>) -> Result<T> + Sync,
) -> Result<Vec<T>>
where
    W: Sync,
    T: Send,
{
    let lanes = lanes.min(work.len());
    let copies: Option<Vec<Option<Box<dyn Hook>>>> = if lanes < 2 {
        None
    } else {
        match &hook {
            None => Some((0..lanes).map(|_| None).collect()),
            Some(h) => (0..lanes).map(|_| h.fork().map(Some)).collect(),
        }
    };
    let Some(copies) = copies else {
        let mut hook = hook;
        return work.iter().map(|w| job(w, reborrow(&mut hook))).collect();
    };
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<T>>>> = work.iter().map(|_| Mutex::new(None)).collect();
    let started: Result<()> = std::thread::scope(|sc| {
        for mut h in copies {
            let (next, stop, slots, job) = (&next, &stop, &slots, &job);
            let lane = move || {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(|_| "overseer-lane".into())
                    .build()
                    .map_err(|e| Error::Threads(e.to_string()))?;
                pool.install(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(w) = work.get(i) else { break };
                        let r = job(w, crate::runner::boxed(&mut h));
                        if r.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        *slots[i].lock().expect("a lane never panics holding a slot") = Some(r);
                    }
                });
                Ok::<(), Error>(())
            };
            std::thread::Builder::new()
                .name("overseer-lane-main".into())
                .spawn_scoped(sc, lane)
                .map_err(|e| Error::Threads(e.to_string()))?;
        }
        Ok(())
    });
    started?;
    let mut out = Vec::with_capacity(work.len());
    let mut first_err = None;
    for slot in slots {
        match slot
            .into_inner()
            .expect("a lane never panics holding a slot")
        {
            Some(Ok(t)) => out.push(t),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            // Not run: a lane failed first (or could not start its pool).
            None => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None if out.len() == work.len() => Ok(out),
        None => Err(Error::Threads(
            "a lane stopped before its work was done".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_batches_balance_the_lanes() {
        // One lane: the batch size as given.
        assert_eq!(lane_batch(41, 16, 1), 16);
        // 3 batches of 16 would leave a lane idle: 4 of 11.
        assert_eq!(lane_batch(41, 16, 2), 11);
        assert_eq!(lane_batch(32, 16, 2), 16);
        // Fewer items than lanes x batch: split so that both lanes work.
        assert_eq!(lane_batch(9, 16, 2), 5);
        assert_eq!(lane_batch(64, 64, 2), 32);
        assert_eq!(lane_batch(128, 64, 2), 64);
        assert_eq!(lane_batch(1, 16, 2), 1);
        assert_eq!(lane_batch(0, 16, 2), 16);
    }

    #[test]
    fn balanced_runs_even_out_padded_tokens() {
        let cost = |lens: &[usize], runs: &[usize]| -> Vec<usize> {
            let mut at = 0;
            runs.iter()
                .map(|&r| {
                    at += r;
                    r * lens[at - 1]
                })
                .collect()
        };
        // 32 prompts of 30..61 tokens in two batches: equal rows would cost 16 × 45
        // and 16 × 61; balanced, the short batch takes more rows.
        let lens: Vec<usize> = (30..62).collect();
        let runs = balanced_runs(&lens, 32, 2);
        assert_eq!(runs.iter().sum::<usize>(), 32);
        assert_eq!(runs.len(), 2);
        assert!(runs[0] > runs[1], "{runs:?}");
        let c = cost(&lens, &runs);
        assert!(c.iter().max() < Some(&(16 * 61)), "{c:?}");
        // The row limit holds, and forces more runs than asked when needed.
        let runs = balanced_runs(&lens, 8, 2);
        assert_eq!(runs.len(), 4);
        assert!(runs.iter().all(|&r| r <= 8));
        // Equal lengths: equal rows.
        assert_eq!(balanced_runs(&[5; 12], 16, 3), vec![4, 4, 4]);
        assert_eq!(balanced_runs(&[], 16, 2), Vec::<usize>::new());
        assert_eq!(balanced_runs(&[7], 16, 2), vec![1]);
    }

    #[test]
    fn lanes_return_results_in_order_and_the_first_error() {
        let work: Vec<usize> = (0..23).collect();
        let out = in_lanes(2, &work, None, |&w, _| Ok(w * 2)).expect("no job fails");
        assert_eq!(out, work.iter().map(|w| w * 2).collect::<Vec<_>>());
        let r = in_lanes(2, &work, None, |&w, _| {
            if w == 7 {
                Err(Error::InvalidArgument("seven".into()))
            } else {
                Ok(w)
            }
        });
        assert!(matches!(r, Err(Error::InvalidArgument(m)) if m == "seven"));
    }

    #[test]
    fn each_lane_runs_on_its_own_thread() {
        let work: Vec<usize> = (0..8).collect();
        let names = in_lanes(2, &work, None, |_, _| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            Ok((
                std::thread::current().name().map(str::to_string),
                rayon::current_num_threads(),
            ))
        })
        .expect("no job fails");
        for (name, threads) in names {
            assert_eq!(name.as_deref(), Some("overseer-lane"));
            assert_eq!(threads, 1, "a lane is a one-thread pool");
        }
    }
}
