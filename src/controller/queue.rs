//! The controller's work queue: which app to reconcile next, and when.
//!
//! kube's `Controller` does this job too, but it runs on types that carry a whole `ObjectMeta`
//! (360 bytes per app in the cache, for two strings) and keeps a key of four strings per app in
//! its store and in each of its queues. This queue keeps, per app, only the key the caller gives
//! it, and only while something is due for that app; the cache holds the compact
//! [`crate::runtime::cached::CachedApp`].
//!
//! What it guarantees, as kube's controller did:
//! - an app is reconciled by one reconcile at a time; a trigger while it runs brings it back
//!   once, right after;
//! - a trigger for an app already waiting does not queue it twice, and the earliest time asked
//!   for wins;
//! - at most `concurrency` reconciles run at once, started in the order they came due;
//! - an app's follow-up (a trigger while its reconcile ran, or within [`FOLLOW_UP_WINDOW`] of
//!   its end: most often the watch events of its own writes) takes turns with the apps in line,
//!   instead of waiting behind all of them. A burst of new apps would otherwise end with a
//!   second line as long as the first, of reconciles that find nothing to do (some 11 MiB of
//!   keys and states at 100,000 apps), and each app would be settled only once the line had
//!   gone round;
//! - on shutdown no new reconcile starts and the running ones end.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};

/// How long after an app's reconcile ends a trigger for it counts as a follow-up: the watch
/// events of the reconcile's own writes come within milliseconds, or seconds on a busy API
/// server.
pub const FOLLOW_UP_WINDOW: Duration = Duration::from_secs(10);

/// Apps whose reconcile ended, remembered for [`FOLLOW_UP_WINDOW`]: at most this many (past
/// it, those older than the window go, then all of them: a forgotten app's follow-up only
/// waits in line).
const RECENT_MAX: usize = 4096;

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Look at the app again after `after`, or at its next change if that comes first.
    pub fn requeue(after: Duration) -> Self {
        Self {
            requeue_after: Some(after),
        }
    }

    /// Look at the app again at its next change (or the next resync of every app).
    pub fn await_change() -> Self {
        Self { requeue_after: None }
    }

    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// An app's key in the queue: `namespace/name`, in one allocation that the queue's entries
/// share (a burst of new apps queues them all: some 190 bytes an app while queued, with its
/// state, where an `ObjectRef` and its copies took some 350).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppKey(std::sync::Arc<str>);

impl AppKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(format!("{namespace}/{name}").into())
    }

    /// Neither a namespace nor a name holds a `/`.
    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map_or("", |(namespace, _)| namespace)
    }

    pub fn name(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(_, name)| name)
    }
}

/// What brings apps into the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger<K> {
    /// This app, now.
    One(K),
    /// Every app the cache holds, now.
    All,
}

enum State {
    /// Due at a time to come.
    Waiting { at: Instant, timer: delay_queue::Key },
    /// Due now, in the ready line.
    Ready,
    /// Being reconciled; due again at `again` (a trigger that came meanwhile).
    Running { again: Option<Instant> },
}

/// The queue's state, apart from the driving loop ([`run`]).
///
/// A look at every app ([`Trigger::All`]: at start, each resync, after missed changes) is a
/// sweep through a list of the apps (`T`: what the cache lists them by, a pointer each) that
/// makes each one's key only when it starts. Scheduling every app at once would make a key and
/// a state for each (some 190 bytes an app: 19 MB at 100,000 apps, every resync).
pub struct WorkQueue<K, T = K> {
    states: HashMap<K, State>,
    timers: DelayQueue<K>,
    ready: VecDeque<K>,
    /// Apps due again right after their reconcile (the module's doc), in their own line.
    follow_ups: VecDeque<K>,
    /// When the last reconcile of an app ended, for [`FOLLOW_UP_WINDOW`].
    recent: HashMap<K, Instant>,
    sweep: VecDeque<T>,
    /// The line whose turn it is to start an app ([`Line`]): the follow-ups, the ready line and
    /// the sweep take turns, so none of them holds the others back.
    turn: usize,
}

/// The lines apps start from, in their turns' order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    FollowUps,
    Ready,
    Sweep,
}

impl Line {
    const ALL: [Line; 3] = [Line::FollowUps, Line::Ready, Line::Sweep];
}

impl<K: Hash + Eq + Clone, T> Default for WorkQueue<K, T> {
    fn default() -> Self {
        Self {
            states: HashMap::new(),
            timers: DelayQueue::new(),
            ready: VecDeque::new(),
            follow_ups: VecDeque::new(),
            recent: HashMap::new(),
            sweep: VecDeque::new(),
            turn: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, T: Into<K>> WorkQueue<K, T> {
    /// `key` is due at `at` (now, or later): the earliest time asked for wins.
    pub fn schedule(&mut self, key: K, at: Instant, now: Instant) {
        let state = match self.states.remove(&key) {
            None if at <= now && self.ended_recently(&key, now) => {
                self.line(true).push_back(key.clone());
                State::Ready
            }
            None => self.wait_or_ready(&key, at, now),
            Some(State::Ready) => State::Ready,
            Some(State::Running { again }) => State::Running {
                again: Some(again.map_or(at, |a| a.min(at))),
            },
            Some(State::Waiting { at: due, timer }) if at < due && at <= now => {
                self.timers.remove(&timer);
                let follow_up = self.ended_recently(&key, now);
                self.line(follow_up).push_back(key.clone());
                State::Ready
            }
            Some(State::Waiting { at: due, timer }) if at < due => {
                self.timers.reset_at(&timer, at);
                State::Waiting { at, timer }
            }
            Some(waiting) => waiting,
        };
        self.states.insert(key, state);
    }

    /// Whether `key`'s last reconcile ended within [`FOLLOW_UP_WINDOW`] of `now` (forgotten
    /// once asked: its follow-up is the one).
    fn ended_recently(&mut self, key: &K, now: Instant) -> bool {
        self.recent
            .remove(key)
            .is_some_and(|ended| now.saturating_duration_since(ended) < FOLLOW_UP_WINDOW)
    }

    /// The line an app due now joins: the follow-ups', or the ready line.
    fn line(&mut self, follow_up: bool) -> &mut VecDeque<K> {
        if follow_up {
            &mut self.follow_ups
        } else {
            &mut self.ready
        }
    }

    fn wait_or_ready(&mut self, key: &K, at: Instant, now: Instant) -> State {
        if at <= now {
            self.ready.push_back(key.clone());
            State::Ready
        } else {
            State::Waiting {
                at,
                timer: self.timers.insert_at(key.clone(), at),
            }
        }
    }

    /// Every app in `all` is due now: they start in turn with the ready line. A sweep still
    /// going is replaced (the new list holds its apps, less those deleted since).
    pub fn sweep(&mut self, all: Vec<T>) {
        self.sweep = all.into();
    }

    /// The next app to reconcile, marked running.
    pub fn start_next(&mut self) -> Option<K> {
        loop {
            let line = self.next_line()?;
            let key = match line {
                Line::FollowUps => self.follow_ups.pop_front(),
                Line::Ready => self.ready.pop_front(),
                Line::Sweep => None,
            };
            if let Some(key) = key {
                self.states.insert(key.clone(), State::Running { again: None });
                return Some(key);
            }
            let key: K = self.sweep.pop_front()?.into();
            if self.sweep.is_empty() {
                self.sweep = VecDeque::new();
            }
            // What a trigger now would do ([`WorkQueue::schedule`]): an app in the ready line
            // starts there, a running one comes back once it ends, a waiting one starts now.
            match self.states.get_mut(&key) {
                Some(State::Ready) => continue,
                Some(State::Running { again }) => {
                    *again = Some(Instant::now());
                    continue;
                }
                Some(State::Waiting { timer, .. }) => {
                    self.timers.remove(timer);
                }
                None => {}
            }
            self.states.insert(key.clone(), State::Running { again: None });
            return Some(key);
        }
    }

    /// The line that starts the next app: the next in turn that has one.
    fn next_line(&mut self) -> Option<Line> {
        let line = (0..Line::ALL.len())
            .map(|i| Line::ALL[(self.turn + i) % Line::ALL.len()])
            .find(|line| match line {
                Line::FollowUps => !self.follow_ups.is_empty(),
                Line::Ready => !self.ready.is_empty(),
                Line::Sweep => !self.sweep.is_empty(),
            })?;
        self.turn = (line as usize + 1) % Line::ALL.len();
        Some(line)
    }

    /// `key`'s reconcile ended and asked for `action`: it is due again at the earlier of that and
    /// of a trigger that came while it ran, or forgotten until its next trigger.
    pub fn finish(&mut self, key: K, action: Action, now: Instant) {
        let again = match self.states.remove(&key) {
            Some(State::Running { again }) => again,
            _ => None,
        };
        let requeue = action.requeue_after.map(|after| now + after);
        let next = match (again, requeue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if self.recent.len() >= RECENT_MAX {
            self.recent
                .retain(|_, ended| now.saturating_duration_since(*ended) < FOLLOW_UP_WINDOW);
            if self.recent.len() >= RECENT_MAX {
                self.recent = HashMap::new();
            }
        }
        self.recent.insert(key.clone(), now);
        match next {
            // A trigger that came while it ran: a follow-up.
            Some(at) if again.is_some() && at <= now => {
                self.line(true).push_back(key.clone());
                self.states.insert(key, State::Ready);
            }
            Some(at) => {
                let state = self.wait_or_ready(&key, at, now);
                self.states.insert(key, state);
            }
            None => {}
        }
        self.shrink();
    }

    /// Moves the apps whose time came into the ready line; ready once no timer is left.
    async fn expired(&mut self) {
        match std::future::poll_fn(|cx| self.timers.poll_expired(cx)).await {
            Some(expired) => {
                let key = expired.into_inner();
                if let Some(state) = self.states.get_mut(&key) {
                    *state = State::Ready;
                    self.ready.push_back(key);
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Apps waiting or running (a sweep's apps count as they start).
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.sweep.is_empty()
    }

    /// A burst of triggered apps fills the queue, which then drains: give the room back (the
    /// idle operator holds entries only for apps with something due).
    fn shrink(&mut self) {
        if crate::runtime::store::worth_shrinking(self.states.len(), self.states.capacity()) {
            self.states.shrink_to(self.states.len() * 2);
            self.ready.shrink_to(self.ready.len() * 2);
            self.follow_ups.shrink_to(self.follow_ups.len() * 2);
            if self.timers.len() < self.timers.capacity() / 4 {
                self.timers.compact();
            }
        }
    }
}

/// Runs the queue until `shutdown` (or until `triggers` ends): reconciles each app that comes
/// due with `reconcile`, at most `concurrency` at once. `all` lists every app, for
/// [`Trigger::All`]. Returns once the running reconciles have ended.
pub async fn run<K, T, F, Fut>(
    triggers: impl Stream<Item = Trigger<K>>,
    all: impl Fn() -> Vec<T>,
    concurrency: usize,
    mut reconcile: F,
    shutdown: CancellationToken,
) where
    K: Hash + Eq + Clone,
    T: Into<K>,
    F: FnMut(K) -> Fut,
    Fut: Future<Output = Action>,
{
    let concurrency = concurrency.max(1);
    let mut triggers = std::pin::pin!(triggers);
    let mut queue = WorkQueue::<K, T>::default();
    let mut running = FuturesUnordered::new();
    let mut accepting = true;
    loop {
        while accepting && running.len() < concurrency {
            let Some(key) = queue.start_next() else { break };
            let reconciling = reconcile(key.clone());
            running.push(async move { (key, reconciling.await) });
        }
        if !accepting && running.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if accepting => accepting = false,
            Some((key, action)) = running.next(), if !running.is_empty() => {
                queue.finish(key, action, Instant::now());
            }
            trigger = triggers.next(), if accepting => match trigger {
                Some(Trigger::One(key)) => queue.schedule(key, Instant::now(), Instant::now()),
                Some(Trigger::All) => queue.sweep(all()),
                None => accepting = false,
            },
            _ = queue.expired(), if accepting => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn at(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    #[test]
    fn an_app_key_gives_back_its_namespace_and_name() {
        let key = AppKey::new("team-a", "billing");
        assert_eq!((key.namespace(), key.name()), ("team-a", "billing"));
        assert_eq!(key, AppKey::new("team-a", "billing"));
        assert_ne!(key, AppKey::new("team", "a-billing"));
        let cluster = AppKey::new("", "x");
        assert_eq!((cluster.namespace(), cluster.name()), ("", "x"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_for_a_waiting_app_keeps_the_earliest_time_and_queues_it_once() {
        let mut q: WorkQueue<_> = WorkQueue::default();
        let now = Instant::now();
        q.schedule("a", at(30), now);
        q.schedule("a", at(10), now);
        q.schedule("a", at(20), now);
        assert_eq!(q.len(), 1);
        assert_eq!(q.start_next(), None, "nothing due yet");
        tokio::time::advance(Duration::from_secs(10)).await;
        q.expired().await;
        assert_eq!(q.start_next(), Some("a"));
        assert_eq!(q.start_next(), None, "once");
        // Now, twice: one entry in the ready line.
        q.schedule("b", Instant::now(), Instant::now());
        q.schedule("b", Instant::now(), Instant::now());
        assert_eq!(q.start_next(), Some("b"));
        assert_eq!(q.start_next(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_while_running_brings_the_app_back_once_after_it_ends() {
        let mut q: WorkQueue<_> = WorkQueue::default();
        q.schedule("a", Instant::now(), Instant::now());
        assert_eq!(q.start_next(), Some("a"));
        q.schedule("a", Instant::now(), Instant::now());
        q.schedule("a", Instant::now(), Instant::now());
        assert_eq!(q.start_next(), None, "not while it runs");
        q.finish("a", Action::requeue(Duration::from_secs(60)), Instant::now());
        assert_eq!(
            q.start_next(),
            Some("a"),
            "the trigger is earlier than the requeue"
        );
        q.finish("a", Action::await_change(), Instant::now());
        assert!(q.is_empty(), "nothing due: forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_requeue_comes_due_at_its_time() {
        let mut q: WorkQueue<_> = WorkQueue::default();
        q.schedule("a", Instant::now(), Instant::now());
        assert_eq!(q.start_next(), Some("a"));
        q.finish("a", Action::requeue(Duration::from_secs(5)), Instant::now());
        let started = Instant::now();
        q.expired().await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(q.start_next(), Some("a"));
        // A trigger now, before an app's later timer, moves it to now.
        q.finish("a", Action::requeue(Duration::from_secs(5)), Instant::now());
        q.schedule("a", Instant::now(), Instant::now());
        assert_eq!(q.start_next(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_drained_queue_gives_its_room_back() {
        let mut q: WorkQueue<_> = WorkQueue::default();
        for i in 0..10_000 {
            q.schedule(i, Instant::now(), Instant::now());
        }
        let big = q.states.capacity();
        while let Some(i) = q.start_next() {
            q.finish(i, Action::await_change(), Instant::now());
        }
        assert!(q.is_empty());
        assert!(q.states.capacity() < big / 4, "{} of {big}", q.states.capacity());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_holds_no_state_for_an_app_until_it_starts() {
        let mut q: WorkQueue<u32> = WorkQueue::default();
        q.sweep((0..10_000).collect());
        assert_eq!(q.len(), 0, "no key or state made ahead");
        assert!(!q.is_empty());
        assert_eq!(q.start_next(), Some(0));
        assert_eq!(q.len(), 1, "the one running");
        q.finish(0, Action::await_change(), Instant::now());
        let rest: Vec<u32> = std::iter::from_fn(|| q.start_next()).collect();
        assert_eq!(rest, (1..10_000).collect::<Vec<_>>());
        assert_eq!(q.sweep.capacity(), 0, "the list goes once swept");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_while_an_app_runs_brings_it_back_before_the_line_has_gone_round() {
        let mut q: WorkQueue<u32> = WorkQueue::default();
        for k in 1..=4 {
            q.schedule(k, Instant::now(), Instant::now());
        }
        assert_eq!(q.start_next(), Some(1));
        // The watch event of its own write, while it runs.
        q.schedule(1, Instant::now(), Instant::now());
        q.finish(1, Action::await_change(), Instant::now());
        let order: Vec<u32> = std::iter::from_fn(|| q.start_next()).collect();
        assert_eq!(order, vec![1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_just_after_an_app_ran_is_a_follow_up_and_a_later_one_waits_in_line() {
        let mut q: WorkQueue<u32> = WorkQueue::default();
        for k in 1..=3 {
            q.schedule(k, Instant::now(), Instant::now());
        }
        assert_eq!(q.start_next(), Some(1));
        q.finish(1, Action::await_change(), Instant::now());
        // Its own write's watch event, just after its end.
        q.schedule(1, Instant::now(), Instant::now());
        assert_eq!(
            q.start_next(),
            Some(1),
            "a follow-up does not wait behind the line"
        );
        q.finish(1, Action::await_change(), Instant::now());
        tokio::time::advance(FOLLOW_UP_WINDOW).await;
        // A change of its own, later: in line.
        q.schedule(1, Instant::now(), Instant::now());
        let order: Vec<u32> = std::iter::from_fn(|| q.start_next()).collect();
        assert_eq!(order, vec![2, 3, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn follow_ups_take_turns_with_the_line() {
        let mut q: WorkQueue<u32> = WorkQueue::default();
        for k in 1..=3 {
            q.schedule(k, Instant::now(), Instant::now());
        }
        let running: Vec<u32> = std::iter::from_fn(|| q.start_next()).collect();
        assert_eq!(running, vec![1, 2, 3]);
        for k in 1..=3 {
            q.schedule(k, Instant::now(), Instant::now());
        }
        for k in 10..=12 {
            q.schedule(k, Instant::now(), Instant::now());
        }
        for k in 1..=3 {
            q.finish(k, Action::await_change(), Instant::now());
        }
        let order: Vec<u32> = std::iter::from_fn(|| q.start_next()).collect();
        assert_eq!(order, vec![1, 10, 2, 11, 3, 12]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_apps_remembered_as_just_ended_are_bounded() {
        let mut q: WorkQueue<u32> = WorkQueue::default();
        for k in 0..RECENT_MAX as u32 + 10 {
            q.schedule(k, Instant::now(), Instant::now());
            assert_eq!(q.start_next(), Some(k));
            q.finish(k, Action::await_change(), Instant::now());
        }
        assert!(q.recent.len() <= RECENT_MAX, "{} remembered", q.recent.len());
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_and_the_ready_line_take_turns() {
        let mut q: WorkQueue<u32> = WorkQueue::default();
        q.sweep(vec![1, 2, 3]);
        q.schedule(10, Instant::now(), Instant::now());
        q.schedule(11, Instant::now(), Instant::now());
        let order: Vec<u32> = std::iter::from_fn(|| q.start_next()).collect();
        assert_eq!(order, vec![10, 1, 11, 2, 3]);
        // A new sweep replaces one still going.
        q.sweep(vec![4, 5]);
        q.sweep(vec![6]);
        assert_eq!(q.start_next(), Some(6));
        assert_eq!(q.start_next(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_swept_app_already_due_or_running_is_not_started_twice() {
        let mut q: WorkQueue<&str> = WorkQueue::default();
        // "a" waits in the ready line, "b" runs, "c" waits for its timer, "d" has nothing due.
        q.schedule("b", Instant::now(), Instant::now());
        assert_eq!(q.start_next(), Some("b"));
        q.schedule("a", Instant::now(), Instant::now());
        q.schedule("c", at(60), Instant::now());
        q.sweep(vec!["a", "b", "c", "d"]);
        let order: Vec<&str> = std::iter::from_fn(|| q.start_next()).collect();
        assert_eq!(
            order,
            vec!["a", "c", "d"],
            "a once, from the ready line; b still runs"
        );
        assert!(q.timers.is_empty(), "c started now: its timer is gone");
        // b comes back once, right after it ends, for the sweep that found it running.
        q.finish("b", Action::await_change(), Instant::now());
        assert_eq!(q.start_next(), Some("b"));
        assert_eq!(q.start_next(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_runs_at_most_concurrency_at_once_and_one_reconcile_per_app() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let shutdown = CancellationToken::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (now_running, most) = (Arc::new(Mutex::new(0usize)), Arc::new(Mutex::new(0usize)));
        let reconcile = {
            let (log, now_running, most) = (log.clone(), now_running.clone(), most.clone());
            move |key: u32| {
                let (log, now_running, most) = (log.clone(), now_running.clone(), most.clone());
                async move {
                    {
                        let mut n = now_running.lock().unwrap();
                        *n += 1;
                        let mut m = most.lock().unwrap();
                        *m = (*m).max(*n);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    *now_running.lock().unwrap() -= 1;
                    log.lock().unwrap().push(key);
                    Action::await_change()
                }
            }
        };
        for key in [1, 2, 3, 1, 1] {
            tx.unbounded_send(Trigger::One(key)).unwrap();
        }
        tx.unbounded_send(Trigger::All).unwrap();
        let stop = shutdown.clone();
        let log_done = log.clone();
        let task = tokio::spawn(run(rx, || vec![1u32, 2, 3, 4], 2, reconcile, shutdown));
        // Bounded: the loop is driven by paused time until every app has been seen.
        for _ in 0..100 {
            if log_done.lock().unwrap().contains(&4) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        stop.cancel();
        task.await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(*most.lock().unwrap(), 2);
        let mut seen = log.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, vec![1, 2, 3, 4]);
        // 1, 2, 3 were triggered twice while waiting or running (once more by All): each ran at
        // most twice, never at once with itself.
        for key in [1, 2, 3] {
            assert!(log.iter().filter(|k| **k == key).count() <= 2, "{log:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_the_running_reconciles_end_and_starts_no_more() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let shutdown = CancellationToken::new();
        let ended = Arc::new(Mutex::new(Vec::new()));
        let reconcile = {
            let ended = ended.clone();
            move |key: u32| {
                let ended = ended.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    ended.lock().unwrap().push(key);
                    Action::await_change()
                }
            }
        };
        for key in 0..4 {
            tx.unbounded_send(Trigger::One(key)).unwrap();
        }
        let task = tokio::spawn(run(rx, Vec::<u32>::new, 1, reconcile, shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(
            *ended.lock().unwrap(),
            vec![0],
            "the running one ended; no other started"
        );
    }
}
