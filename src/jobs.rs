//! A fixed list of independent jobs on a few threads: each thread sets up its own state once
//! (a copy of the models, say) and takes the next job from one shared queue; what the jobs
//! report reaches the calling thread, which alone touches progress bars. The first error stops
//! the queue. Results come back in job order, so the output does not depend on which thread ran
//! which job.
use anyhow::Result;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

/// Runs every job of `jobs` with `work` on up to `workers` threads, each with the state `init`
/// makes on that thread; `on_event` receives, on this thread, what the jobs send.
pub fn run<J: Sync, S, T: Send, E: Send>(
    jobs: &[J],
    workers: usize,
    init: impl Fn() -> Result<S> + Sync,
    work: impl Fn(&mut S, &J, &mpsc::Sender<E>) -> Result<T> + Sync,
    mut on_event: impl FnMut(E),
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let done: Vec<Mutex<Option<T>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let (tx, rx) = mpsc::channel();
    let outcomes: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.clamp(1, jobs.len().max(1)))
            .map(|_| {
                let tx = tx.clone();
                let (next, failed, done, init, work) = (&next, &failed, &done, &init, &work);
                s.spawn(move || -> Result<()> {
                    let worker = || -> Result<()> {
                        let mut state = init()?;
                        while !failed.load(Ordering::Relaxed) {
                            let j = next.fetch_add(1, Ordering::Relaxed);
                            let Some(job) = jobs.get(j) else { break };
                            let result = work(&mut state, job, &tx)?;
                            *done[j].lock().expect("no thread panicked holding it") = Some(result);
                        }
                        Ok(())
                    };
                    let outcome = worker();
                    if outcome.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    outcome
                })
            })
            .collect();
        drop(tx);
        for event in rx {
            on_event(event);
        }
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    outcomes.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(done.into_iter().map(|d| d.into_inner().expect("no thread panicked holding it").expect("every job ran")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_in_job_order_events_on_the_caller_and_the_first_error_stops_the_queue() {
        let jobs: Vec<u32> = (0..20).collect();
        let mut seen = 0;
        let out = run(&jobs, 3, || Ok(10), |s: &mut u32, &j, tx| Ok(tx.send(j).map(|_| j * *s)?), |_| seen += 1).unwrap();
        assert_eq!(out, jobs.iter().map(|j| j * 10).collect::<Vec<_>>());
        assert_eq!(seen, 20);
        let err = run(&jobs, 2, || Ok(()), |_, &j, _: &mpsc::Sender<()>| if j == 5 { anyhow::bail!("job 5") } else { Ok(j) }, |_| {});
        assert_eq!(err.unwrap_err().to_string(), "job 5");
        let init = run(&jobs, 2, || -> Result<()> { anyhow::bail!("no state") }, |_, &j, _: &mpsc::Sender<()>| Ok(j), |_| {});
        assert_eq!(init.unwrap_err().to_string(), "no state");
    }
}
