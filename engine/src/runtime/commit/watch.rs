//! Calls into the Kafka client that do not come back.
//!
//! librdkafka's `rd_kafka_send_offsets_to_transaction` waits for the group
//! coordinator without limit whatever timeout it is given
//! (confluentinc/librdkafka#5456, and #5511 for a coordinator that leaves the
//! cluster's metadata): an engine's commit thread was seen sitting in it for
//! minutes after its broker restarted, while the main loop, holding its input
//! for that commit, processed nothing. Every call the commit thread makes into
//! the client with a timeout goes through its producer's [`CallWatch`]; the
//! main loop, which never waits on the commit thread without a limit, asks
//! whether the call has overrun its timeout, and gives up on a commit whose
//! call has (`Committer::abandon`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long past its own timeout a call into the Kafka client may run before
/// the commit it belongs to is given up.
pub(in crate::runtime) const GRACE: Duration = Duration::from_secs(10);

/// The call with a timeout a producer is in, if any.
#[derive(Default)]
pub(in crate::runtime) struct CallWatch {
    current: Mutex<Option<Call>>,
}

/// A call in progress: what it does and when its timeout ends.
#[derive(Clone, Copy)]
struct Call {
    what: &'static str,
    due: Instant,
}

/// A call that has overrun its timeout.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::runtime) struct Overdue {
    /// What the call does ("adding offsets to the transaction").
    pub what: &'static str,
    /// How long past its timeout it is, at the time asked.
    pub by: Duration,
}

impl CallWatch {
    /// Runs `op` with `timeout`, noted as `what` until it returns.
    pub fn call<T>(
        &self,
        what: &'static str,
        timeout: Duration,
        op: impl FnOnce(Duration) -> T,
    ) -> T {
        self.set(Some(Call {
            what,
            due: Instant::now() + timeout,
        }));
        let result = op(timeout);
        self.set(None);
        result
    }

    /// The call in progress, if at `now` it is more than `grace` past its
    /// timeout.
    pub fn overdue(&self, now: Instant, grace: Duration) -> Option<Overdue> {
        let call = (*self.current.lock().ok()?)?;
        let by = now.checked_duration_since(call.due)?;
        (by > grace).then_some(Overdue {
            what: call.what,
            by,
        })
    }

    fn set(&self, call: Option<Call>) {
        if let Ok(mut current) = self.current.lock() {
            *current = call;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_call_is_never_overdue() {
        let w = CallWatch::default();
        let later = Instant::now() + Duration::from_secs(3600);
        assert_eq!(w.overdue(later, Duration::ZERO), None);
    }

    /// Within its timeout and the grace after it a call is not overdue;
    /// beyond them it is, by how far past its timeout it is.
    #[test]
    fn a_call_is_overdue_only_beyond_its_timeout_and_the_grace() {
        let w = CallWatch::default();
        let timeout = Duration::from_secs(10);
        let grace = Duration::from_secs(5);
        w.call("adding offsets", timeout, |t| {
            assert_eq!(t, timeout, "the call is given its timeout");
            let now = Instant::now();
            assert_eq!(w.overdue(now, grace), None);
            assert_eq!(w.overdue(now + timeout + grace - MS, grace), None);
            let late = w.overdue(now + timeout + grace + 100 * MS, grace);
            let late = late.expect("overdue past the timeout and the grace");
            assert_eq!(late.what, "adding offsets");
            // Measured from the end of the timeout, not from `now`.
            let soon = grace + 100 * MS..grace + Duration::from_secs(1);
            assert!(soon.contains(&late.by), "{late:?}");
        });
    }

    #[test]
    fn a_call_that_returned_is_not_overdue() {
        let w = CallWatch::default();
        let value = w.call("committing", MS, |_| 7);
        assert_eq!(value, 7);
        let later = Instant::now() + Duration::from_secs(3600);
        assert_eq!(w.overdue(later, Duration::ZERO), None);
    }
}
