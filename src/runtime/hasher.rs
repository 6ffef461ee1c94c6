//! argon2id off the async executor, with bounded parallelism.
//!
//! Hashing takes tens of milliseconds of CPU and ~19 MiB of memory per call. Running it inline
//! would stall every task on the worker thread; running it unbounded on the blocking pool (512
//! threads) would let a burst of new apps use gigabytes. So: `spawn_blocking`, at most `permits`
//! at a time (one per core by default).
//!
//! Two things keep it small and quick:
//!
//! - The workers' argon2 memory is kept between hashes (allocating it per hash costs a page fault
//!   per 4 KiB), and given back to the system once the hasher has been idle for
//!   [`IDLE_RELEASE`]. Each buffer is a mapping of its own ([`secret::HashMemory`]), so freeing
//!   it unmaps it whatever the allocator.
//! - A bounded pool of ready (secret, hash) pairs: neither depends on the app (the secret and the
//!   salt are random), so they are computed ahead, when every worker is free, and a rotation
//!   takes one instead of hashing on its request's path. Refilling waits for idle workers, so it
//!   never delays a requested hash by more than the one hash it has started; the plaintexts are
//!   only in this process's memory and are zeroized when dropped ([`ClientSecret`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::model::secret::{self, ClientSecret, HashMemory, HashParams};
use crate::runtime::error::Error;
use crate::runtime::fair::{FairPermit, FairPermits};

/// The workers' argon2 memory goes back to the system after this long without a hash.
pub const IDLE_RELEASE: Duration = Duration::from_secs(5);

/// Default size of the pool of ready (secret, hash) pairs.
pub const DEFAULT_POOL: usize = 8;

/// Working memory of the hashes not running now (at most one per permit), and when the last
/// hash ended.
#[derive(Default)]
struct Memory {
    idle: Vec<HashMemory>,
    running: usize,
    last_used: Option<Instant>,
    /// Whether a task is waiting to release `idle`.
    releasing: bool,
    /// How long the buffers stay after the last hash ([`IDLE_RELEASE`]).
    release_after: Duration,
}

#[derive(Clone)]
pub struct Hasher {
    params: HashParams,
    /// The parameters whose hashes are verified: `params` first, then those accepted from an
    /// earlier configuration (`--hash-accept-params`). Anything else is never computed.
    trusted: Arc<[HashParams]>,
    /// Shared between tenants (namespaces, verify callers) in turn: a storm of one tenant's
    /// hashes delays another's by one turn, not by the storm ([`crate::runtime::fair`]).
    permits: FairPermits,
    workers: usize,
    memory: Arc<Mutex<Memory>>,
    /// Ready (secret, hash) pairs, at most `pool_size`.
    pool: Arc<Mutex<VecDeque<(ClientSecret, String)>>>,
    pool_size: usize,
    /// Whether a task is refilling `pool`.
    refilling: Arc<AtomicBool>,
    /// Signalled whenever a hash ends (a worker may be free).
    finished: Arc<Notify>,
    /// A hash of a random secret nobody knows, checked in place of an unknown app's so that an
    /// unknown client id costs what a known one does.
    dummy: Arc<tokio::sync::OnceCell<String>>,
    /// The pool's refill thread (see [`Hasher::background`]), started with the first refill.
    background: Arc<std::sync::OnceLock<Background>>,
}

/// A job for the background thread.
type Job = Box<dyn FnOnce() + Send>;

/// One thread that runs the pool's refills under `SCHED_IDLE`: it gets a core only when nothing
/// else wants it, so making hashes ahead never slows the API server, etcd or a rotation in
/// flight (all of which share the cores). Where the policy cannot be set, it runs as any thread.
struct Background {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Background {
    fn start() -> Background {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("hash-refill".into())
            .spawn(move || {
                use thread_priority::{
                    NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
                    set_thread_priority_and_policy, thread_native_id,
                };
                if let Err(e) = set_thread_priority_and_policy(
                    thread_native_id(),
                    ThreadPriority::Min,
                    ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
                ) {
                    tracing::debug!(error = ?e, "the pool refills at normal priority (SCHED_IDLE refused)");
                }
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread for the pool refills; they run on the blocking pool");
        }
        Background { jobs }
    }

    /// Runs `job` on the thread and returns its result (on the blocking pool if the thread is
    /// gone).
    async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        if let Err(std::sync::mpsc::SendError(job)) = self.jobs.send(job) {
            tokio::task::spawn_blocking(job)
                .await
                .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))?;
        }
        rx.await
            .map_err(|_| Error::Internal("the refill thread went away".into()))
    }
}

impl Hasher {
    /// A hasher running at most `parallelism` hashes at a time, with no pool of ready pairs.
    pub fn new(params: HashParams, parallelism: usize) -> Self {
        Self::with_pool(params, parallelism, 0)
    }

    /// [`Hasher::new`] with a pool of up to `pool_size` ready (secret, hash) pairs, filled in
    /// the background (from now on, when called within a Tokio runtime) when every worker is
    /// free.
    pub fn with_pool(params: HashParams, parallelism: usize, pool_size: usize) -> Self {
        let workers = parallelism.max(1);
        let hasher = Self {
            params,
            trusted: Arc::from([params]),
            permits: FairPermits::new(workers),
            workers,
            memory: Arc::new(Mutex::new(Memory {
                release_after: IDLE_RELEASE,
                ..Memory::default()
            })),
            pool: Arc::default(),
            pool_size,
            refilling: Arc::default(),
            finished: Arc::default(),
            dummy: Arc::default(),
            background: Arc::default(),
        };
        hasher.refill();
        hasher
    }

    /// Also verifies hashes made with `previous` (an earlier configuration's parameters); new
    /// hashes keep using the current ones.
    pub fn accepting(mut self, previous: &[HashParams]) -> Self {
        let mut trusted = vec![self.params];
        trusted.extend(previous.iter().filter(|p| **p != self.params));
        trusted.dedup();
        self.trusted = Arc::from(trusted);
        self
    }

    /// The parameters whose hashes this hasher verifies, the current ones first.
    pub fn trusted(&self) -> &[HashParams] {
        &self.trusted
    }

    /// Ready pairs in the pool now.
    pub fn pooled(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Workers' argon2 buffers held now (in use or idle).
    pub fn buffers(&self) -> usize {
        let m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        m.idle.len() + m.running
    }

    /// Starts a background task that tops the pool up, unless one runs or there is no runtime.
    fn refill(&self) {
        if self.pool_size == 0 || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.refilling.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            loop {
                if this.pooled() >= this.pool_size {
                    this.refilling.store(false, Ordering::Release);
                    // A pair taken between the check and the store would otherwise wait for
                    // the next take.
                    if this.pooled() >= this.pool_size || this.refilling.swap(true, Ordering::AcqRel) {
                        return;
                    }
                    continue;
                }
                // Lower priority than requested hashes: only when every worker is free. A
                // requested hash queued on the semaphore gets a released permit before anyone
                // else, so try_acquire never takes one from it.
                let permit = this.permits.try_acquire_if_idle();
                let Some(permit) = permit else {
                    let finished = this.finished.notified();
                    // Re-checked after subscribing, so a hash ending meanwhile is not missed.
                    if !this.permits.idle() {
                        finished.await;
                    }
                    continue;
                };
                let params = this.params;
                let made = this
                    .run(permit, this.background(), move |memory| {
                        let s = ClientSecret::generate()?;
                        let phc = secret::hash_in(s.expose(), &params, memory)?;
                        Ok((s, phc))
                    })
                    .await;
                match made {
                    Ok(pair) => this
                        .pool
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(pair),
                    Err(_) => {
                        // Requested hashes report the cause; the pool stops until the next take.
                        this.refilling.store(false, Ordering::Release);
                        return;
                    }
                }
            }
        });
    }

    /// Checks `plaintext` against every hash of `phcs` (all of them, whatever matches first, so
    /// the work does not depend on which one matches), or against a dummy when `phcs` is empty.
    /// The answer has one entry per hash of `phcs`.
    pub async fn verify_all(
        &self,
        tenant: &str,
        plaintext: String,
        phcs: Vec<String>,
    ) -> Result<Vec<bool>, Error> {
        let trusted = self.trusted.clone();
        let checked = if phcs.is_empty() {
            let dummy = self
                .dummy
                .get_or_try_init(|| async { self.generate(tenant).await.map(|(_, phc)| phc) })
                .await?
                .clone();
            vec![dummy]
        } else {
            phcs.clone()
        };
        let matches = self
            .blocking(tenant, move |memory| {
                let well_formed = secret::check_format(&plaintext).is_ok();
                Ok(checked
                    .iter()
                    .map(|phc| {
                        well_formed && secret::verify_with(&plaintext, phc, &trusted, memory).unwrap_or(false)
                    })
                    .collect::<Vec<bool>>())
            })
            .await?;
        Ok(if phcs.is_empty() { Vec::new() } else { matches })
    }

    pub fn params(&self) -> HashParams {
        self.params
    }

    /// A fresh secret and its PHC hash: a ready pair from the pool if there is one (and the
    /// pool is topped up in the background), else hashed now.
    pub async fn generate(&self, tenant: &str) -> Result<(ClientSecret, String), Error> {
        let ready = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        self.refill();
        if let Some(pair) = ready {
            return Ok(pair);
        }
        let params = self.params;
        self.blocking(tenant, move |memory| {
            let s = ClientSecret::generate()?;
            let phc = secret::hash_in(s.expose(), &params, memory)?;
            Ok((s, phc))
        })
        .await
    }

    /// Whether `plaintext` verifies against `phc`. A malformed hash, or one made with
    /// parameters this hasher does not trust (never computed: its cost would be the hash
    /// string's choice), counts as "does not verify".
    pub async fn verify(&self, tenant: &str, plaintext: String, phc: String) -> Result<bool, Error> {
        if !secret::uses_trusted_params(&phc, &self.trusted) {
            return Ok(false);
        }
        let trusted = self.trusted.clone();
        self.blocking(tenant, move |memory| {
            Ok(secret::check_format(&plaintext).is_ok()
                && secret::verify_with(&plaintext, &phc, &trusted, memory).unwrap_or(false))
        })
        .await
    }

    /// Runs `f` with a worker's memory when `tenant`'s turn for a worker comes.
    async fn blocking<T: Send + 'static>(
        &self,
        tenant: &str,
        f: impl FnOnce(&mut HashMemory) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let permit = self.permits.acquire(tenant).await;
        self.run(permit, None, f).await
    }

    /// Runs `f` on the blocking pool with a worker's memory, holding `permit` until it ends.
    /// The thread that fills the pool at idle CPU priority, when there is one: only with two
    /// workers or more. The refill holds one worker's permit while it hashes, so with a single
    /// worker a requested hash could wait behind a refill that the CPU scheduler holds back.
    fn background(&self) -> Option<&Background> {
        (self.workers >= 2).then(|| self.background.get_or_init(Background::start))
    }

    /// Runs `f` with a worker's memory, holding `permit`: on the blocking pool, or on
    /// `background`'s thread.
    async fn run<T: Send + 'static>(
        &self,
        permit: FairPermit,
        background: Option<&Background>,
        f: impl FnOnce(&mut HashMemory) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let pool = self.memory.clone();
        let job = move || {
            let take = {
                let mut m = pool.lock().unwrap_or_else(|e| e.into_inner());
                m.running += 1;
                m.idle.pop()
            };
            let mut memory = take.unwrap_or_default();
            let result = f(&mut memory);
            let mut m = pool.lock().unwrap_or_else(|e| e.into_inner());
            m.running -= 1;
            m.idle.push(memory);
            m.last_used = Some(Instant::now());
            drop(permit);
            result
        };
        let result = match background {
            Some(background) => background.run(job).await,
            None => tokio::task::spawn_blocking(job)
                .await
                .map_err(|e| Error::Internal(format!("hashing task failed: {e}"))),
        };
        self.finished.notify_waiters();
        self.release_when_idle();
        result?
    }

    /// Frees the idle workers' memory once no hash has run for [`IDLE_RELEASE`] (one waiting
    /// task at a time).
    fn release_when_idle(&self) {
        {
            let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            if m.releasing || m.idle.is_empty() {
                return;
            }
            m.releasing = true;
        }
        let memory = self.memory.clone();
        tokio::spawn(async move {
            let mut wait = Duration::ZERO;
            loop {
                tokio::time::sleep(wait).await;
                let mut m = memory.lock().unwrap_or_else(|e| e.into_inner());
                let after = m.release_after;
                let since = m.last_used.map_or(after, |t| t.elapsed());
                if m.running == 0 && since >= after {
                    // Dropped outside the lock: unmapping 19 MiB is not free.
                    let idle = std::mem::take(&mut m.idle);
                    m.releasing = false;
                    drop(m);
                    drop(idle);
                    return;
                }
                wait = after.saturating_sub(since).max(Duration::from_millis(10));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: HashParams = HashParams {
        m_cost_kib: 256,
        t_cost: 1,
        p_cost: 1,
    };

    /// Polls `done` every 10 ms for at most 30 s.
    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The scheduling policy (field 41 of `/proc/self/task/TID/stat`) of this process's thread
    /// named `name`, if there is one.
    fn policy_of_thread(name: &str) -> Option<u32> {
        std::fs::read_dir("/proc/self/task")
            .ok()?
            .flatten()
            .find_map(|task| {
                let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
                if comm.trim() != name {
                    return None;
                }
                let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                // Fields after the command (in parentheses) start at field 3.
                let after = &stat[stat.rfind(')')? + 2..];
                after.split(' ').nth(41 - 3)?.parse().ok()
            })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_is_refilled_by_a_thread_at_idle_priority() {
        const SCHED_IDLE: u32 = 5;
        let hasher = Hasher::with_pool(FAST, 2, 2);
        eventually("a full pool", || hasher.pooled() == 2).await;
        assert_eq!(policy_of_thread("hash-refill"), Some(SCHED_IDLE));
        // A requested hash does not use it, and the pool is made again behind it.
        let (secret, phc) = hasher.generate("ns").await.unwrap();
        assert!(secret::verify_with(secret.expose(), &phc, &[FAST], &mut HashMemory::default()).unwrap());
        eventually("the pool refilled", || hasher.pooled() == 2).await;
    }

    #[tokio::test]
    async fn the_pool_fills_up_to_its_bound_and_its_pairs_verify() {
        let hasher = Hasher::with_pool(FAST, 2, 3);
        eventually("a full pool", || hasher.pooled() == 3).await;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5 {
            let (secret, phc) = hasher.generate("ns").await.unwrap();
            assert!(hasher.pooled() <= 3);
            assert!(
                hasher
                    .verify("ns", secret.expose().to_owned(), phc.clone())
                    .await
                    .unwrap()
            );
            assert!(
                !hasher
                    .verify("ns", ClientSecret::generate().unwrap().expose().to_owned(), phc)
                    .await
                    .unwrap()
            );
            assert!(
                seen.insert(secret.expose().to_owned()),
                "a pair was handed out twice"
            );
        }
        // Taken pairs are replaced, never beyond the bound.
        eventually("a refilled pool", || hasher.pooled() == 3).await;
        assert_eq!(hasher.pooled(), 3);
    }

    // Several threads, so the refill could race the verifications for the free worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_is_refilled_only_when_every_worker_is_free() {
        let hasher = Hasher::with_pool(FAST, 2, 2);
        eventually("a full pool", || hasher.pooled() == 2).await;
        // One worker busy (a permit held, as a requested hash holds it), then the pool emptied:
        // the refill, started by the takes, never takes the free worker (verifications do not
        // take from the pool; were the refill allowed that worker, it would fill the pool
        // meanwhile).
        let busy = hasher.permits.acquire("ns").await;
        let (secret, phc) = hasher.generate("ns").await.unwrap();
        hasher.generate("ns").await.unwrap();
        for _ in 0..20 {
            assert!(
                hasher
                    .verify("ns", secret.expose().to_owned(), phc.clone())
                    .await
                    .unwrap()
            );
            assert_eq!(hasher.pooled(), 0, "the refill waits while a worker is busy");
        }
        drop(busy);
        // Then a hash ends with both workers free, and the refill goes on.
        assert!(
            hasher
                .verify("ns", secret.expose().to_owned(), phc)
                .await
                .unwrap()
        );
        eventually("the pool refilled", || hasher.pooled() == 2).await;
    }

    #[tokio::test]
    async fn no_pool_without_a_size() {
        let hasher = Hasher::new(FAST, 2);
        let (secret, phc) = hasher.generate("ns").await.unwrap();
        assert!(
            hasher
                .verify("ns", secret.expose().to_owned(), phc)
                .await
                .unwrap()
        );
        assert_eq!(hasher.pooled(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hash_whose_caller_went_away_keeps_its_worker_until_it_ends() {
        let hasher = Hasher::new(FAST, 1);
        // The hash is held at a gate until its caller has gone: the order is the test's, not
        // the machine's speed.
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let held = hasher.clone();
        let caller = tokio::spawn(async move {
            held.blocking("ns", move |memory| {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
                let s = ClientSecret::generate()?;
                Ok(secret::hash_in(s.expose(), &FAST, memory)?)
            })
            .await
        });
        started_rx.await.expect("the hash started");
        caller.abort();
        assert!(
            caller.await.expect_err("the caller was cancelled").is_cancelled(),
            "the caller went away while its hash ran"
        );
        // Its hash still runs: it keeps the one worker and its buffer.
        assert_eq!(hasher.permits.available(), 0);
        assert_eq!(hasher.buffers(), 1);
        let next = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.generate("ns").await }
        });
        assert_eq!(hasher.buffers(), 1, "no second hash beside the abandoned one");
        assert!(!next.is_finished());
        release_tx.send(()).expect("the held hash is waiting");
        next.await.unwrap().unwrap();
        // One worker, so one buffer: an abandoned hash never lets another start beside it.
        assert_eq!(hasher.buffers(), 1);
        assert_eq!(hasher.permits.available(), 1);
    }

    #[tokio::test]
    async fn idle_workers_give_their_memory_back() {
        let hasher = Hasher::new(FAST, 2);
        hasher.memory.lock().unwrap().release_after = Duration::from_secs(1);
        let (a, b) = tokio::join!(hasher.generate("ns"), hasher.generate("ns"));
        a.unwrap();
        b.unwrap();
        assert!(hasher.buffers() >= 1, "the buffers are kept between hashes");
        eventually("the idle buffers to be freed", || hasher.buffers() == 0).await;
        // And taken again when needed.
        hasher.generate("ns").await.unwrap();
        assert_eq!(hasher.buffers(), 1);
    }
}
