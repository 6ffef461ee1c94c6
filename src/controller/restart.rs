//! Rollout restarts of an app's consumers (`spec.rolloutRestartTargets`) after a rotation.
//!
//! A restart sets the pod template annotation `oauthapp.io/restarted-for` to the rotation id.
//! The id, not a time: patching twice for one rotation changes nothing the second time, so the
//! workload's controller rolls out once per rotation whatever happens between the patch and the
//! status write that records it (a crash, a lost race, a leader change).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::model::crd::{MANAGER, OAuthApp, RESTARTED_FOR_ANNOTATION, RestartKind, RestartTarget};
use crate::model::status;
use crate::model::status::CONSUMERS_RESTARTED;
use crate::runtime::context::Context;
use crate::runtime::error::{Error, is_status};
use crate::runtime::writes::{self, app_key};

/// The first retry of a failed restart comes after this long.
const MIN_BACKOFF: Duration = Duration::from_secs(5);
/// Retries of a failed restart are at most this far apart.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why one target could not be restarted: the condition's reason, the metric's result and what
/// to tell the user.
struct Failure {
    reason: &'static str,
    result: &'static str,
    message: String,
}

/// Restarts `targets` for the app's current rotation, then records what was done in the status
/// (`status.rolloutRestarts`, condition `ConsumersRestarted`). A target that is missing or that
/// the operator may not patch holds nothing back: Ok(Some(wait)) says when to try again (the
/// wait doubles, from 5 s to 5 min, with the time the condition has been False).
pub async fn restart_consumers(
    ctx: &Context,
    app: &OAuthApp,
    targets: Vec<RestartTarget>,
) -> Result<Option<Duration>, Error> {
    let Some(rotation_id) = app.status.as_ref().and_then(|s| s.rotation_id.clone()) else {
        return Ok(None);
    };
    let Restarts {
        restarted,
        failed,
        reason,
    } = restart_each(ctx, app, targets, &rotation_id).await?;
    let now = Timestamp::now();
    let new_status = status::restarts_status(app, &restarted, &failed, reason, now);
    let condition = |s: &crate::model::crd::OAuthAppStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == CONSUMERS_RESTARTED)
            .cloned()
    };
    let before = app.status.as_ref().and_then(condition);
    let after = condition(&new_status);
    if app.status.as_ref() != Some(&new_status) {
        writes::write_status(ctx, app, new_status).await?;
    }
    if !restarted.is_empty() {
        let names = restarted
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        info!(app = %app_key(app), rotation_id = %rotation_id, targets = %names, "rollout restart of consumers");
        writes::publish_in_background(
            ctx,
            app,
            EventType::Normal,
            "ConsumersRestarted",
            format!("Rollout restart of {names} for rotation {rotation_id}"),
        );
    }
    let Some(after) = after.filter(|c| c.status == "False") else {
        return Ok(None);
    };
    // One Warning per new failure, not one per retry.
    if before.as_ref().map(|c| (&c.status, &c.message)) != Some((&after.status, &after.message)) {
        writes::publish_in_background(
            ctx,
            app,
            EventType::Warning,
            "ConsumerRestartFailed",
            after.message.clone(),
        );
    }
    let failing_for = Timestamp::now()
        .duration_since(after.last_transition_time.0)
        .unsigned_abs();
    Ok(Some(failing_for.clamp(MIN_BACKOFF, MAX_BACKOFF)))
}

/// What a round of restarts came to: the targets restarted, those that failed (and why), and
/// the reason of the first failure (empty: none failed).
struct Restarts {
    restarted: Vec<RestartTarget>,
    failed: Vec<(RestartTarget, String)>,
    reason: &'static str,
}

/// Restarts each of `targets` for `rotation_id`, counting each in the metrics.
async fn restart_each(
    ctx: &Context,
    app: &OAuthApp,
    targets: Vec<RestartTarget>,
    rotation_id: &str,
) -> Result<Restarts, Error> {
    let ns = app.namespace().unwrap_or_default();
    let mut restarted = Vec::new();
    let mut failed = Vec::new();
    let mut reason = "";
    for target in targets {
        ctx.leadership.check()?;
        let result = patch(ctx.client.clone(), &ns, &target, rotation_id).await;
        let outcome = match result {
            Ok(()) => "restarted",
            Err(e) => {
                let failure = failure(&e);
                warn!(app = %app_key(app), target = %target, reason = failure.reason, error = %failure.message, "rollout restart failed; retrying with backoff");
                if reason.is_empty() {
                    reason = failure.reason;
                }
                failed.push((target.clone(), failure.message));
                failure.result
            }
        };
        ctx.metrics
            .rollout_restarts
            .get_or_create(&crate::runtime::metrics::RestartLabels {
                kind: target.kind.as_str(),
                result: outcome,
            })
            .inc();
        if outcome == "restarted" {
            restarted.push(target);
        }
    }
    Ok(Restarts {
        restarted,
        failed,
        reason,
    })
}

/// Sets the target's pod template annotation to the rotation id (a JSON merge patch: nothing
/// else of the workload is touched).
async fn patch(
    client: Client,
    ns: &str,
    target: &RestartTarget,
    rotation_id: &str,
) -> Result<(), kube::Error> {
    match target.kind {
        RestartKind::Deployment => patch_kind::<Deployment>(client, ns, &target.name, rotation_id).await,
        RestartKind::StatefulSet => patch_kind::<StatefulSet>(client, ns, &target.name, rotation_id).await,
        RestartKind::DaemonSet => patch_kind::<DaemonSet>(client, ns, &target.name, rotation_id).await,
    }
}

async fn patch_kind<K>(client: Client, ns: &str, name: &str, rotation_id: &str) -> Result<(), kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let body = serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_FOR_ANNOTATION: rotation_id}}}}
    });
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    Api::<K>::namespaced(client, ns)
        .patch(name, &params, &Patch::Merge(&body))
        .await
        .map(drop)
}

fn failure(e: &kube::Error) -> Failure {
    if is_status(e, 404) {
        Failure {
            reason: "TargetNotFound",
            result: "not_found",
            message: "not found".into(),
        }
    } else if is_status(e, 403) {
        Failure {
            reason: "Forbidden",
            result: "forbidden",
            message: "the operator may not patch it (the chart grants patch on deployments, statefulsets and daemonsets with rolloutRestart.enabled)".into(),
        }
    } else {
        Failure {
            reason: "RestartFailed",
            result: "error",
            message: crate::runtime::error::redact(&e.to_string()),
        }
    }
}
