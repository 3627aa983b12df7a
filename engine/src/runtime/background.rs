//! The commit thread: one long-lived thread that runs the engine's background
//! commits one after the other.
//!
//! A thread started for each commit (ten a second at the default interval)
//! began every commit with an empty allocator heap: the encodings and the
//! RocksDB batch it built came from memory the operating system had to fault
//! in and zero, and what the thread left behind went to other threads when it
//! ended. One thread that lives as long as the engine reuses its own memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

type Task = Box<dyn FnOnce() + Send>;

/// A named thread that runs the closures given to [`Background::run`] in turn.
/// Dropping it ends the thread once its current task has run, without waiting
/// for that (a commit in flight when the engine stops on an error is bounded
/// by its own deadline, as a thread of its own was).
pub(super) struct Background {
    tasks: mpsc::Sender<Task>,
    /// Cleared by [`Background::abandon`]: the tasks not begun are skipped.
    open: Arc<AtomicBool>,
}

/// What a task handed to [`Background::run`] returns, once it has run: its
/// value, or the panic it ended in.
pub(super) struct Job<T> {
    result: mpsc::Receiver<std::thread::Result<T>>,
    finished: Arc<AtomicBool>,
    /// The outcome, once [`Job::wait`] has received it.
    received: Option<std::thread::Result<T>>,
}

impl Background {
    /// Starts the thread, named `name` (as `top` and the per-thread CPU split
    /// of `cargo bench --bench pipeline -- guarantees` show it).
    pub fn start(name: &str) -> std::io::Result<Background> {
        let (tasks, queue) = mpsc::channel::<Task>();
        let open = Arc::new(AtomicBool::new(true));
        let running = Arc::clone(&open);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for task in queue {
                    if !running.load(Ordering::Acquire) {
                        break;
                    }
                    task();
                }
            })?;
        Ok(Background { tasks, open })
    }

    /// Leaves the thread to the task it is running (one stuck in a call that
    /// does not return): the tasks given after it never run, and their jobs
    /// report the thread ended. The thread ends once that task returns.
    pub fn abandon(self) {
        self.open.store(false, Ordering::Release);
    }

    /// Runs `f` on the thread after the tasks given before it. A panic in
    /// `f` is caught and handed to [`Job::join`]; the thread goes on.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Job<T> {
        let (tx, result) = mpsc::sync_channel(1);
        let finished = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&finished);
        let task: Task = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            // Sent before it is marked finished, so a finished job's join
            // never waits.
            let _ = tx.send(r);
            done.store(true, Ordering::Release);
        });
        // A send fails only if the thread is gone; the job's join then
        // reports it as a panic.
        if self.tasks.send(task).is_err() {
            finished.store(true, Ordering::Release);
        }
        Job {
            result,
            finished,
            received: None,
        }
    }
}

impl<T> Job<T> {
    /// Whether the task has run (or can no longer run).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Waits up to `limit` for the task to run; whether it has (or can no
    /// longer run).
    pub fn wait(&mut self, limit: std::time::Duration) -> bool {
        if self.received.is_some() {
            return true;
        }
        match self.result.recv_timeout(limit) {
            Ok(r) => {
                self.received = Some(r);
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        }
    }

    /// Waits for the task; its value, or its panic (also when the thread
    /// ended before running it).
    pub fn join(self) -> std::thread::Result<T> {
        match self.received {
            Some(r) => r,
            None => self
                .result
                .recv()
                .unwrap_or_else(|_| Err(Box::new("the commit thread has ended"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_in_turn_on_one_named_thread() {
        let bg = Background::start("rapport-test-bg").unwrap();
        let a = bg.run(|| std::thread::current().name().map(str::to_owned));
        let b = bg.run(|| std::thread::current().id());
        let c = bg.run(|| std::thread::current().id());
        assert_eq!(a.join().unwrap().as_deref(), Some("rapport-test-bg"));
        let (b, c) = (b.join().unwrap(), c.join().unwrap());
        assert_eq!(b, c);
        assert_ne!(b, std::thread::current().id());
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_thread_goes_on() {
        let bg = Background::start("rapport-test-bg").unwrap();
        let bad = bg.run(|| -> u32 { panic!("commit went wrong") });
        assert!(bad.join().is_err());
        let good = bg.run(|| 7);
        assert_eq!(good.join().unwrap(), 7);
    }

    /// A wait that runs out reports the task not run; one that sees it run
    /// keeps its value for the join.
    #[test]
    fn a_wait_runs_out_or_keeps_the_value_for_the_join() {
        let bg = Background::start("rapport-test-wait").unwrap();
        let (go, wait) = mpsc::channel::<()>();
        let mut job = bg.run(move || wait.recv().map(|()| 7).unwrap_or(0));
        assert!(!job.wait(std::time::Duration::from_millis(20)));
        go.send(()).unwrap();
        assert!(job.wait(std::time::Duration::from_secs(10)));
        assert!(job.wait(std::time::Duration::ZERO), "still received");
        assert_eq!(job.join().unwrap(), 7);
    }

    /// The tasks behind a stuck one never run once the thread is abandoned,
    /// even when the stuck one returns after all.
    #[test]
    fn an_abandoned_thread_runs_no_task_given_after_the_running_one() {
        let bg = Background::start("rapport-test-abandon").unwrap();
        let (go, wait) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        let stuck = bg.run(move || {
            let _ = started.send(());
            wait.recv().is_ok()
        });
        let ran = Arc::new(AtomicBool::new(false));
        let later = {
            let ran = Arc::clone(&ran);
            bg.run(move || ran.store(true, Ordering::SeqCst))
        };
        running.recv().unwrap();
        bg.abandon();
        go.send(()).unwrap();
        assert!(stuck.join().unwrap(), "the running task finishes");
        assert!(later.join().is_err(), "the later task reported run");
        assert!(!ran.load(Ordering::SeqCst), "the later task ran");
    }

    #[test]
    fn a_job_is_finished_once_its_task_has_run() {
        let bg = Background::start("rapport-test-bg").unwrap();
        let (go, wait) = mpsc::channel::<()>();
        let job = bg.run(move || wait.recv().is_ok());
        assert!(!job.is_finished(), "finished before its task could run");
        go.send(()).unwrap();
        while !job.is_finished() {
            std::thread::yield_now();
        }
        assert!(job.join().unwrap());
    }
}
