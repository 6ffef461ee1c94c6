//! Leader election, fenced: the controller acts only while this replica holds the Lease *and*
//! has seen its hold renewed recently enough.
//!
//! kube-lease-manager acquires and renews the Lease and says when it thinks this replica became
//! or stopped being the holder. While its renewals fail it only logs: a leader cut off from the
//! API server would go on acting, and act again the moment the connection returns, although a
//! standby has long taken the Lease over. So the manager's word is not enough here. This module
//! also watches the Lease object itself and acts only while the Lease, as last seen from the API
//! server, names this replica with a `renewTime` less than the lease duration (minus a margin)
//! ago. When that runs out it steps down by itself: [`Leadership`] closes first (no controller
//! write starts after that point), then `oauthapp_leader` goes to 0 and the controller is
//! stopped. It leads again only once both say so: the manager, and a Lease renewed by it.
//!
//! The fence ([`Leadership::check`]) applies to the controller's writes only. The REST API runs
//! on every replica, leader or not: its rotations are requested by an authorized caller and are
//! serialized across replicas by resourceVersion preconditions, not by the Lease, so they are
//! exempt ([`exempt_if`], applied by `rotation::rotate_with` to trigger `Api`). The exemption is
//! the marked case and the fence the default, so a write path nobody thought about is fenced.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::runtime::error::Error;
use crate::runtime::metrics::Metrics;

tokio::task_local! {
    /// Set around work that is not the leader's (a REST API rotation).
    static EXEMPT: ();
}

/// Whether this replica may act as the leader (start controller writes). Open when leader
/// election is off.
pub struct Leadership(AtomicBool);

impl Default for Leadership {
    fn default() -> Self {
        Self(AtomicBool::new(true))
    }
}

impl Leadership {
    pub fn is_acting(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn set(&self, acting: bool) {
        self.0.store(acting, Ordering::SeqCst);
    }

    /// Called right before each controller write: fails with [`Error::NotLeader`] once this
    /// replica has stepped down. Work run by [`exempt_if`] passes.
    pub fn check(&self) -> Result<(), Error> {
        if self.is_acting() || EXEMPT.try_with(|_| ()).is_ok() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }
}

/// Runs `fut` exempt from the leader fence when `exempt` (a REST API rotation).
pub async fn exempt_if<F: Future>(exempt: bool, fut: F) -> F::Output {
    if exempt {
        EXEMPT.scope((), fut).await
    } else {
        fut.await
    }
}

/// The Lease and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// `leaseDurationSeconds`: a standby takes over once the Lease is this old.
    pub duration: Duration,
}

impl LeaseConfig {
    fn duration_secs(&self) -> u64 {
        self.duration.as_secs().max(2)
    }

    /// How long before expiry the manager renews: two thirds of the duration (a renewal a third
    /// of the way in), so a renewal, or its retry, has time to land and be seen well before
    /// the fence closes.
    fn grace_secs(&self) -> u64 {
        (self.duration_secs() * 2 / 3).max(1)
    }

    /// How long before the Lease expires (as a standby sees it) this replica stops acting:
    /// a sixth of the duration, at least half a second.
    pub fn margin(&self) -> Duration {
        (Duration::from_secs(self.duration_secs()) / 6).max(Duration::from_millis(500))
    }
}

/// Until when `lease` lets `identity` act: `renewTime + leaseDurationSeconds - margin`, when it
/// names `identity` as holder; None otherwise. `renewTime` was written by the holder with its
/// own clock, the one this is compared with.
pub fn acting_until(
    lease: &Lease,
    identity: &str,
    default_duration: Duration,
    margin: Duration,
) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref()?.0;
    let duration = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map_or(default_duration, |s| Duration::from_secs(s as u64));
    let valid = SignedDuration::try_from(duration.saturating_sub(margin)).ok()?;
    renewed.checked_add(valid).ok()
}

/// How long from now until `until`; None when it has passed (or there is none).
fn remaining(until: Option<Timestamp>) -> Option<Duration> {
    let left = until?.duration_since(Timestamp::now());
    Duration::try_from(left).ok().filter(|d| !d.is_zero())
}

/// Keeps `hold` at [`acting_until`] for the Lease as the API server shows it.
async fn watch_lease(api: Api<Lease>, config: LeaseConfig, hold: watch::Sender<Option<Timestamp>>) {
    let fields = format!("metadata.name={}", config.name);
    let default = Duration::from_secs(config.duration_secs());
    let margin = config.margin();
    let mut events = watcher(api, watcher::Config::default().fields(&fields)).boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
                let until = acting_until(&lease, &config.identity, default, margin);
                debug!(?until, "Lease seen");
                hold.send_replace(until);
            }
            Ok(watcher::Event::Delete(_)) => {
                hold.send_replace(None);
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(e) => {
                // The fence closes by itself when no renewal is seen: nothing to do but retry.
                debug!(error = %crate::runtime::error::redact(&e.to_string()), "Lease watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs the controller (`controller(stop)`) while this replica leads, as the module explains,
/// until `shutdown`; releases the Lease at the end.
pub async fn lead<F, Fut>(
    client: kube::Client,
    config: LeaseConfig,
    leadership: &Leadership,
    metrics: &Arc<Metrics>,
    controller: F,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    leadership.set(false);
    metrics.leader.set(0);
    let Some(manager) = lease_manager(&client, &config, &shutdown).await else {
        return Ok(());
    };
    let (mut leading, task) = manager.watch().await;
    let (hold_tx, mut hold) = watch::channel(None);
    let lease_watch = tokio::spawn(watch_lease(
        Api::namespaced(client, &config.namespace),
        config.clone(),
        hold_tx,
    ));
    info!(lease = %format!("{}/{}", config.namespace, config.name), identity = %config.identity, "waiting for leadership");
    'outer: loop {
        if !standby(&mut leading, &mut hold, &shutdown).await {
            break 'outer;
        }
        info!("leading: starting the controller");
        leadership.set(true);
        metrics.leader.set(1);
        let stop = shutdown.child_token();
        let run = controller(stop.clone());
        tokio::pin!(run);
        let why = loop {
            let Some(left) = acting_for(&leading, &hold) else {
                break if *leading.borrow() {
                    "the Lease was not renewed in time"
                } else {
                    "the Lease is held by another replica"
                };
            };
            tokio::select! {
                _ = &mut run => {
                    // Stopped by the shutdown.
                    leadership.set(false);
                    metrics.leader.set(0);
                    break 'outer;
                }
                changed = leading.changed() => if changed.is_err() { break "leader election stopped" },
                changed = hold.changed() => if changed.is_err() { break "the Lease watch stopped" },
                _ = tokio::time::sleep(left) => {}
            }
        };
        // Fence first: no controller write starts after this line.
        leadership.set(false);
        metrics.leader.set(0);
        warn!(reason = why, "stepping down: stopping the controller");
        stop.cancel();
        // A reconcile stuck on an unreachable API server cannot write any more: stop waiting
        // for it after a lease duration (dropping the controller aborts it).
        if tokio::time::timeout(config.duration, &mut run).await.is_err() {
            warn!("the controller did not stop within the lease duration; dropped");
        }
        info!("standing by");
    }
    leadership.set(false);
    metrics.leader.set(0);
    lease_watch.abort();
    drop(leading);
    release(task).await;
    Ok(())
}

/// How much longer this replica may act as the leader: while the manager holds the Lease, until
/// the hold the API server last showed runs out (None: it may not).
fn acting_for(
    leading: &watch::Receiver<bool>,
    hold: &watch::Receiver<Option<Timestamp>>,
) -> Option<Duration> {
    if *leading.borrow() {
        remaining(*hold.borrow())
    } else {
        None
    }
}

/// Standby: until the manager holds the Lease and the API server shows it renewed (true), or
/// until the election or the Lease watch stops or the process shuts down (false).
async fn standby(
    leading: &mut watch::Receiver<bool>,
    hold: &mut watch::Receiver<Option<Timestamp>>,
    shutdown: &CancellationToken,
) -> bool {
    while acting_for(leading, hold).is_none() {
        tokio::select! {
            changed = leading.changed() => if changed.is_err() { return false },
            changed = hold.changed() => if changed.is_err() { return false },
            _ = shutdown.cancelled() => return false,
        }
    }
    true
}

/// The Lease manager, once the Lease is read (and created when missing). An API server that
/// cannot be reached yet, or a connection reset at this moment, is retried with a growing pause
/// (standby meanwhile), never a reason to exit. None: shut down meanwhile.
async fn lease_manager(
    client: &kube::Client,
    config: &LeaseConfig,
    shutdown: &CancellationToken,
) -> Option<kube_lease_manager::LeaseManager> {
    let mut pause = Duration::from_millis(200);
    loop {
        let built = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &config.name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(config.duration_secs())
            .with_grace(config.grace_secs())
            .build()
            .await;
        match built {
            Ok(manager) => return Some(manager),
            Err(e) => {
                warn!(
                    lease = %format!("{}/{}", config.namespace, config.name),
                    error = %crate::runtime::error::redact(&e.to_string()),
                    retry_in = ?pause,
                    "cannot read or create the leader-election Lease; standing by"
                );
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return None,
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Lets go of the Lease when the election task hands its manager back, so that a standby
/// takes over at once, not when the Lease expires.
async fn release(
    task: tokio::task::JoinHandle<
        Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
    >,
) {
    match task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                warn!(error = %e, "releasing the Lease failed; a standby takes over when it expires");
            }
        }
        Ok(Err(e)) => warn!(error = %e, "leader election failed"),
        Err(e) => warn!(error = %e, "leader election task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: &str, renewed: Timestamp, secs: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: secs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_hold_lasts_the_lease_duration_minus_the_margin_and_only_for_the_holder() {
        let t = Timestamp::from_second(1_000_000).unwrap();
        let margin = Duration::from_secs(2);
        let l = lease("a", t, Some(15));
        let until = acting_until(&l, "a", Duration::from_secs(99), margin).unwrap();
        assert_eq!(until, Timestamp::from_second(1_000_013).unwrap());
        assert_eq!(acting_until(&l, "b", Duration::from_secs(15), margin), None);
        // No leaseDurationSeconds: ours.
        let l = lease("a", t, None);
        let until = acting_until(&l, "a", Duration::from_secs(6), margin).unwrap();
        assert_eq!(until, Timestamp::from_second(1_000_004).unwrap());
        // Never renewed: no hold.
        let mut l = lease("a", t, Some(15));
        l.spec.as_mut().unwrap().renew_time = None;
        assert_eq!(acting_until(&l, "a", Duration::from_secs(15), margin), None);
    }

    #[test]
    fn a_hold_in_the_past_leaves_nothing_to_act_on() {
        assert_eq!(remaining(None), None);
        let past = Timestamp::now()
            .checked_sub(SignedDuration::from_secs(1))
            .unwrap();
        assert_eq!(remaining(Some(past)), None);
        let future = Timestamp::now()
            .checked_add(SignedDuration::from_secs(60))
            .unwrap();
        assert!(remaining(Some(future)).is_some_and(|d| d > Duration::from_secs(50)));
    }

    #[test]
    fn the_margin_leaves_the_renewal_time_to_land_before_the_fence() {
        for secs in [2, 6, 15, 60] {
            let c = LeaseConfig {
                name: "l".into(),
                namespace: "n".into(),
                identity: "i".into(),
                duration: Duration::from_secs(secs),
            };
            let renew_at = Duration::from_secs(c.duration_secs() - c.grace_secs());
            let fence_at = Duration::from_secs(c.duration_secs()) - c.margin();
            assert!(
                renew_at < fence_at,
                "{secs}s: renew at {renew_at:?}, fence at {fence_at:?}"
            );
            assert!(fence_at < Duration::from_secs(c.duration_secs()));
        }
    }

    #[tokio::test]
    async fn the_fence_stops_controller_writes_but_not_exempt_ones() {
        let l = Leadership::default();
        assert!(l.check().is_ok());
        l.set(false);
        assert!(matches!(l.check(), Err(Error::NotLeader)));
        assert!(exempt_if(true, async { l.check() }).await.is_ok());
        assert!(exempt_if(false, async { l.check() }).await.is_err());
        l.set(true);
        assert!(l.check().is_ok());
    }
}
