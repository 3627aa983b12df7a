//! The threads a batch's partitions and a commit's encodings are worked on:
//! the caller's own and a pool of `rapport-worker-N` threads that live as
//! long as the processor.

use rayon_core::ThreadPool;

/// A pool of `threads` worker threads, named `rapport-worker-1` and on.
pub(super) fn pool(threads: usize) -> std::io::Result<ThreadPool> {
    rayon_core::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("rapport-worker-{}", i + 1))
        .build()
        .map_err(std::io::Error::other)
}

/// Runs `work` over `items` on up to `threads` threads, the heaviest items
/// first, each to the least loaded thread (by `weight`); one result per thread,
/// in thread order. The caller's thread is one of them, the others come from
/// `pool` (none without one).
pub(super) fn on_threads<T: Send, R: Send>(
    pool: Option<&ThreadPool>,
    mut items: Vec<T>,
    threads: usize,
    weight: impl Fn(&T) -> usize,
    work: impl Fn(Vec<T>) -> R + Sync,
) -> Vec<R> {
    let threads = threads.min(items.len());
    let Some(pool) = pool.filter(|_| threads > 1) else {
        return vec![work(items)];
    };
    items.sort_by_key(|t| std::cmp::Reverse(weight(t)));
    let mut chunks: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    let mut load = vec![0usize; threads];
    for item in items {
        let t = (0..threads).min_by_key(|&t| load[t]).unwrap_or(0);
        load[t] += weight(&item);
        chunks[t].push(item);
    }
    let work = &work;
    let mut results: Vec<Option<R>> = (0..threads).map(|_| None).collect();
    // The calling thread takes the first share itself, and what that share
    // allocates belongs to a thread that lives on. A panic in a share is
    // raised again here once every share has ended.
    let mut chunks = chunks.into_iter();
    let first = chunks.next().unwrap_or_default();
    let (mine, theirs) = results.split_at_mut(1);
    pool.in_place_scope(|scope| {
        for (chunk, slot) in chunks.zip(theirs.iter_mut()) {
            scope.spawn(move |_| *slot = Some(work(chunk)));
        }
        mine[0] = Some(work(first));
    });
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> ThreadPool {
        super::pool(threads).expect("pool")
    }

    #[test]
    fn every_item_is_worked_once_with_the_callers_share_first() {
        let pool = pool(2);
        let caller = std::thread::current().id();
        let items: Vec<usize> = (1..=10).collect();
        let shares = on_threads(
            Some(&pool),
            items,
            3,
            |&n| n,
            |chunk: Vec<usize>| (std::thread::current().id(), chunk),
        );
        assert_eq!(shares.len(), 3);
        assert_eq!(shares[0].0, caller, "the caller works the first share");
        assert!(shares[1..].iter().all(|(t, _)| *t != caller));
        let mut all: Vec<usize> = shares.iter().flat_map(|(_, c)| c.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (1..=10).collect::<Vec<_>>());
        // Heaviest first, each to the least loaded share: 55 in all, no share
        // more than the heaviest item above the even split.
        assert!(shares
            .iter()
            .all(|(_, c)| c.iter().sum::<usize>() <= 55 / 3 + 10));
    }

    #[test]
    fn without_a_pool_or_with_one_thread_the_caller_works_everything() {
        let pool = pool(1);
        for (pool, threads) in [(None, 4), (Some(&pool), 1)] {
            let shares = on_threads(
                pool,
                vec![1, 2, 3],
                threads,
                |_| 1,
                |c: Vec<usize>| (std::thread::current().id(), c),
            );
            assert_eq!(shares.len(), 1);
            assert_eq!(shares[0].0, std::thread::current().id());
            assert_eq!(shares[0].1.len(), 3);
        }
    }

    #[test]
    fn a_share_that_panics_is_raised_in_the_caller_after_the_others_end() {
        let pool = pool(1);
        let finished = std::sync::atomic::AtomicUsize::new(0);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            on_threads(
                Some(&pool),
                vec![1, 2],
                2,
                |&n| n,
                |c: Vec<usize>| {
                    if c == [1] {
                        panic!("share of 1");
                    }
                    finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                },
            )
        }));
        assert!(caught.is_err());
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The pool still works afterwards.
        let shares = on_threads(Some(&pool), vec![1, 2], 2, |&n| n, |c: Vec<usize>| c.len());
        assert_eq!(shares, vec![1, 1]);
    }
}
