//! A fixed pool of threads for the extra partition appends of one publish.
//!
//! A publish whose events land on several partitions appends one batch per partition, and each
//! append waits for its own fsync; done one after another, the sync latencies would add up. The
//! publishing thread appends the first batch itself and hands the others to this pool, so they
//! wait concurrently. A pool, not a thread per batch: starting and stopping thousands of threads
//! a second (small batches, many producers) cost more than the appends, in stack mappings, page
//! clearing and TLB shootdowns.
//!
//! Bounded: [`APPEND_THREADS`] threads and a queue of [`APPEND_QUEUE_MAX`] jobs. When the queue
//! is full, the caller runs the job itself (slower, never unbounded). The threads end when the
//! pool (the broker) is dropped.

use crate::broker::BrokerError;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

/// Threads in the pool: enough for every partition of several concurrent publishes to wait on
/// its sync at once.
pub const APPEND_THREADS: usize = 16;
/// Jobs that may wait for a thread before callers run their own.
pub const APPEND_QUEUE_MAX: usize = 256;

/// What a job returns: the base offset of the appended batch.
pub type Outcome = Result<u64, BrokerError>;
type Job = Box<dyn FnOnce() + Send>;

/// The pool.
pub struct Appenders {
    jobs: SyncSender<Job>,
}

impl std::fmt::Debug for Appenders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appenders")
            .field("threads", &APPEND_THREADS)
            .finish_non_exhaustive()
    }
}

/// A job's result, to wait for.
#[derive(Debug)]
pub enum Pending {
    /// Ran (or failed) already.
    Done(Outcome),
    /// Running on the pool.
    Queued(Receiver<Outcome>),
}

impl Pending {
    /// Waits for the job's outcome.
    pub fn wait(self) -> Outcome {
        match self {
            Pending::Done(outcome) => outcome,
            Pending::Queued(rx) => rx.recv().unwrap_or_else(|_| {
                Err(BrokerError::Internal(
                    "an append thread stopped before answering".into(),
                ))
            }),
        }
    }
}

impl Appenders {
    /// Starts the threads.
    ///
    /// # Errors
    /// If a thread cannot be started.
    pub fn start() -> std::io::Result<Appenders> {
        let (tx, rx) = sync_channel::<Job>(APPEND_QUEUE_MAX);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..APPEND_THREADS {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("gearbox-append-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking a job, never while running one.
                        let job = rx
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the pool was dropped
                        }
                    }
                })?;
        }
        Ok(Appenders { jobs: tx })
    }

    /// Runs `job` on the pool, or here when the queue is full.
    pub fn run(&self, job: impl FnOnce() -> Outcome + Send + 'static) -> Pending {
        let (tx, rx) = sync_channel(1);
        let wrapped: Job = Box::new(move || {
            // A panicking append becomes an error for its caller, not a dead thread.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                .unwrap_or_else(|_| Err(BrokerError::Internal("an append panicked".into())));
            let _ = tx.send(outcome);
        });
        match self.jobs.try_send(wrapped) {
            Ok(()) => Pending::Queued(rx),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                job();
                Pending::Queued(rx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn jobs_run_concurrently_and_answer_in_order() {
        let pool = Appenders::start().unwrap();
        // Four jobs that can only finish together: they must run on four threads at once.
        let barrier = Arc::new(Barrier::new(4));
        let pending: Vec<Pending> = (0..4u64)
            .map(|i| {
                let b = Arc::clone(&barrier);
                pool.run(move || {
                    b.wait();
                    Ok(i * 10)
                })
            })
            .collect();
        let out: Vec<u64> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
        assert_eq!(out, vec![0, 10, 20, 30]);
    }

    #[test]
    fn a_full_queue_runs_the_job_in_the_caller() {
        let pool = Appenders::start().unwrap();
        // Hold every thread (and wait until each holds), then fill the queue.
        let gate = Arc::new(Barrier::new(APPEND_THREADS + 1));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let held: Vec<Pending> = (0..APPEND_THREADS)
            .map(|_| {
                let (g, r) = (Arc::clone(&gate), Arc::clone(&running));
                pool.run(move || {
                    r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    g.wait();
                    Ok(0)
                })
            })
            .collect();
        while running.load(std::sync::atomic::Ordering::SeqCst) < APPEND_THREADS {
            std::thread::yield_now();
        }
        let queued: Vec<Pending> = (0..APPEND_QUEUE_MAX).map(|_| pool.run(|| Ok(1))).collect();
        let caller = std::thread::current().id();
        let ran_here = pool.run(move || {
            assert_eq!(std::thread::current().id(), caller, "ran in the caller");
            Ok(2)
        });
        assert_eq!(ran_here.wait().unwrap(), 2);
        gate.wait();
        assert!(held.into_iter().all(|p| p.wait().unwrap() == 0));
        assert!(queued.into_iter().all(|p| p.wait().unwrap() == 1));
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_pool_lives_on() {
        let pool = Appenders::start().unwrap();
        let err = pool.run(|| panic!("boom")).wait().unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        for _ in 0..APPEND_THREADS * 2 {
            assert_eq!(pool.run(|| Ok(7)).wait().unwrap(), 7);
        }
    }
}
