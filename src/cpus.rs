//! How much of the node this process may keep busy.
//!
//! A GPU node has 16 to 192 cores, and an init container may be limited to
//! one (`resources.limits.cpu: 1`, KServe's default). The CPUs come from
//! [`std::thread::available_parallelism`], which reads the affinity mask and
//! the cgroup's CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), rounded
//! up. Threads that hash, unpack and write hold a [`Slot`] while they work on
//! a chunk, so no more of them run at once than there are CPUs to run them:
//! with a quota, more would only be throttled, and would hold bytes in
//! memory while they wait.

use std::sync::{Condvar, Mutex, OnceLock};

/// Bounds glibc's malloc arenas. It makes one per thread under contention,
/// up to eight per core, and each keeps the chunk buffers freed into it, so
/// resident memory grows with the core count (a 16-core node measured 280
/// MiB where 2 cores stayed under 64). Two arenas serve the few threads that
/// allocate chunks. Called once, first thing.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// CPUs this process may use (at least 1).
pub fn available() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The right to keep one CPU busy: taken before a chunk's work, given back
/// (dropped) before waiting for anything another thread does.
pub struct Slot(&'static Slots);

struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

fn slots() -> &'static Slots {
    static SLOTS: OnceLock<Slots> = OnceLock::new();
    SLOTS.get_or_init(|| Slots {
        free: Mutex::new(available()),
        freed: Condvar::new(),
    })
}

impl Slot {
    /// Waits until a CPU is free.
    pub fn take() -> Slot {
        let s = slots();
        let mut free = s.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = s.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Slot(s)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// `f` over `items` on up to [`available`] threads, results in order (for
/// work on many files: rehashing an installed tree).
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = available().min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let done = Mutex::new(&mut out);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                done.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    out.into_iter()
        .map(|r| r.expect("every item was mapped"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_order_and_uses_threads() {
        let items: Vec<u64> = (0..100).collect();
        let out = map(&items, |i| (i * 2, std::thread::current().id()));
        assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            (0..100).map(|i| i * 2).collect::<Vec<_>>()
        );
        if available() > 1 {
            let main = std::thread::current().id();
            assert!(out.iter().all(|o| o.1 != main), "ran on worker threads");
        }
    }

    #[test]
    fn slots_never_exceed_the_cpus() {
        let held: Vec<Slot> = (0..available()).map(|_| Slot::take()).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _slot = Slot::take();
            tx.send(()).unwrap();
        });
        // Every slot is held: the waiter cannot have one yet.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("a freed slot wakes the waiter");
        waiter.join().unwrap();
    }
}
