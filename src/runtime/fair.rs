//! Permits shared fairly between tenants (namespaces): a semaphore whose waiters are served
//! tenant by tenant in turn (round robin), each tenant's own waiters in the order they came.
//!
//! A FIFO semaphore hands out its permits in arrival order, so one namespace with a storm of
//! work (a thousand drift checks, a verify flood) queues ahead of everyone else and another
//! namespace's rotation waits for all of it. Here a tenant that asks waits for at most one turn
//! of each other tenant with work waiting: a storm gets its share, not the whole.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Default)]
struct State {
    /// Permits nobody holds.
    free: usize,
    /// Each tenant's waiters, in the order they came.
    lines: HashMap<Arc<str>, VecDeque<oneshot::Sender<FairPermit>>>,
    /// The tenants with waiters, the next to be served first.
    turns: VecDeque<Arc<str>>,
}

/// `permits` permits, handed out tenant by tenant in turn.
#[derive(Clone)]
pub struct FairPermits {
    total: usize,
    state: Arc<Mutex<State>>,
}

/// One permit; given back (to the next tenant in turn, if any waits) when dropped.
pub struct FairPermit {
    /// `None` once disarmed (a permit that could not be handed over is not given back twice).
    state: Option<Arc<Mutex<State>>>,
}

impl FairPermits {
    pub fn new(permits: usize) -> Self {
        Self {
            total: permits,
            state: Arc::new(Mutex::new(State {
                free: permits,
                ..State::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn permit(&self) -> FairPermit {
        FairPermit {
            state: Some(self.state.clone()),
        }
    }

    /// A permit for `tenant`: at once if one is free, else when this tenant's turn comes.
    /// Cancel-safe: a waiter dropped before its turn takes nothing.
    pub async fn acquire(&self, tenant: &str) -> FairPermit {
        let rx = {
            let mut s = self.lock();
            if s.free > 0 {
                s.free -= 1;
                return self.permit();
            }
            let (tx, rx) = oneshot::channel();
            match s.lines.get_mut(tenant) {
                Some(line) => line.push_back(tx),
                None => {
                    let tenant: Arc<str> = Arc::from(tenant);
                    s.lines.insert(tenant.clone(), VecDeque::from([tx]));
                    s.turns.push_back(tenant);
                }
            }
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The sender lives in `state`, which this `FairPermits` keeps alive: not reached.
            // Were it ever, a permit handed out past the total is the lesser harm than a hang.
            Err(_) => self.permit(),
        }
    }

    /// A permit only if every permit is free (nobody works and nobody waits): for work that
    /// must never delay anyone's.
    pub fn try_acquire_if_idle(&self) -> Option<FairPermit> {
        let mut s = self.lock();
        (s.free == self.total && s.turns.is_empty()).then(|| {
            s.free -= 1;
            self.permit()
        })
    }

    /// Permits nobody holds now.
    pub fn available(&self) -> usize {
        self.lock().free
    }

    /// Whether every permit is free.
    pub fn idle(&self) -> bool {
        self.available() == self.total
    }

    /// Tenants with a waiter now.
    pub fn tenants_waiting(&self) -> usize {
        self.lock().turns.len()
    }
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        loop {
            let next = {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                let Some(tenant) = s.turns.pop_front() else {
                    s.free += 1;
                    return;
                };
                let (waiter, more) = match s.lines.get_mut(&tenant) {
                    Some(line) => (line.pop_front(), !line.is_empty()),
                    None => (None, false),
                };
                if more {
                    s.turns.push_back(tenant);
                } else {
                    s.lines.remove(&tenant);
                }
                waiter
            };
            let Some(waiter) = next else { continue };
            match waiter.send(FairPermit {
                state: Some(state.clone()),
            }) {
                Ok(()) => return,
                // The waiter went away: the permit goes to the next in turn.
                Err(mut unsent) => {
                    unsent.state = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Queues `count` waiters of `tenant`, each recording its name in `served` once it holds a
    /// permit, then holding it until `release` says so.
    fn queue(
        permits: &FairPermits,
        tenant: &'static str,
        count: usize,
        served: &Arc<Mutex<Vec<&'static str>>>,
        release: &Arc<tokio::sync::Semaphore>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..count)
            .map(|_| {
                let (permits, served, release) = (permits.clone(), served.clone(), release.clone());
                tokio::spawn(async move {
                    let _permit = permits.acquire(tenant).await;
                    served.lock().unwrap().push(tenant);
                    release.acquire().await.unwrap().forget();
                })
            })
            .collect()
    }

    /// Yields until `done` holds (tasks spawned on this runtime make progress meanwhile).
    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition not reached");
    }

    #[tokio::test]
    async fn a_tenant_with_a_hundred_waiting_delays_another_by_one_turn() {
        let permits = FairPermits::new(1);
        let served = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let holder = permits.acquire("storm").await;
        let storm = queue(&permits, "storm", 100, &served, &release);
        until(|| permits.lock().lines.get("storm").map_or(0, VecDeque::len) == 100).await;
        let quiet = queue(&permits, "quiet", 1, &served, &release);
        until(|| permits.tenants_waiting() == 2).await;
        drop(holder);
        // One at a time: each waiter runs only when the one before it is released.
        for n in 1..=101 {
            until(|| served.lock().unwrap().len() == n).await;
            release.add_permits(1);
        }
        for task in storm.into_iter().chain(quiet) {
            task.await.unwrap();
        }
        let order = served.lock().unwrap().clone();
        let quiet_at = order.iter().position(|t| *t == "quiet").unwrap();
        assert_eq!(
            quiet_at, 1,
            "served after one storm waiter, not after all: {order:?}"
        );
        assert_eq!(permits.available(), 1);
    }

    #[tokio::test]
    async fn turns_alternate_between_tenants_with_work() {
        let permits = FairPermits::new(1);
        let served = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let holder = permits.acquire("a").await;
        let mut tasks = queue(&permits, "a", 3, &served, &release);
        until(|| permits.lock().lines.get("a").map_or(0, VecDeque::len) == 3).await;
        tasks.extend(queue(&permits, "b", 3, &served, &release));
        until(|| permits.lock().lines.get("b").map_or(0, VecDeque::len) == 3).await;
        drop(holder);
        for n in 1..=6 {
            until(|| served.lock().unwrap().len() == n).await;
            release.add_permits(1);
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*served.lock().unwrap(), ["a", "b", "a", "b", "a", "b"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_takes_no_permit() {
        let permits = FairPermits::new(1);
        let holder = permits.acquire("a").await;
        let gave_up = tokio::time::timeout(Duration::from_millis(10), permits.acquire("b")).await;
        assert!(gave_up.is_err());
        drop(holder);
        assert_eq!(permits.available(), 1);
        assert!(permits.try_acquire_if_idle().is_some());
        assert_eq!(permits.available(), 1, "the idle permit went back when dropped");
    }

    #[tokio::test]
    async fn idle_work_waits_while_anyone_works() {
        let permits = FairPermits::new(2);
        let held = permits.acquire("a").await;
        assert!(permits.try_acquire_if_idle().is_none());
        drop(held);
        let idle = permits.try_acquire_if_idle();
        assert!(idle.is_some());
        assert_eq!(permits.available(), 1);
        drop(idle);
        assert!(permits.idle());
    }
}
