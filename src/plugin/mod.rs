//! The `kubectl oauthapp` plugin (`src/bin/kubectl-oauthapp.rs`): what it shows and decides,
//! as plain functions (`commands` does the I/O around them). It uses the model only
//! ([`crate::model`]: `crd`, `id`, `secret`, `record`), never the operator's runtime.
//!
//! May use: [`crate::model`].

pub mod commands;

use std::fmt::Write as _;

use serde::Serialize;
use uuid::Uuid;

use crate::model::crd::{OAuthApp, PreviousSecret, ROTATE_ANNOTATION, ROTATE_REVOKE_ANNOTATION};
use crate::model::record::app_id;
use crate::model::secret::{self, HashError};

/// The most a client secret read from stdin may be: a real one is 53 bytes; anything past this
/// is not read, so a wrong pipe cannot fill memory.
pub const MAX_STDIN_BYTES: u64 = 4096;

/// One app, as the `status` table and `-o json|yaml` show it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppRow {
    pub namespace: String,
    pub name: String,
    pub app_id: Option<String>,
    pub client_id: Option<String>,
    pub hint: Option<String>,
    pub rotation_id: Option<String>,
    pub rotation_count: i64,
    pub last_rotation: Option<String>,
    pub trigger: Option<String>,
    pub next_rotation: Option<String>,
    /// The previous secret's hint, while the status carries one (`spec.rotation.gracePeriod`).
    pub previous_hint: Option<String>,
    /// When the previous secret stops being valid.
    pub previous_expires_at: Option<String>,
    pub ready: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl AppRow {
    pub fn of(app: &OAuthApp) -> AppRow {
        let status = app.status.clone().unwrap_or_default();
        let ready = app.ready_condition();
        AppRow {
            namespace: app.metadata.namespace.clone().unwrap_or_default(),
            name: app.metadata.name.clone().unwrap_or_default(),
            app_id: status.app_id.clone().or_else(|| app_id(app)),
            client_id: status.client_id,
            hint: status.client_secret_hint,
            rotation_id: status.rotation_id,
            rotation_count: status.rotation_count,
            last_rotation: status.last_rotation_time.map(|t| t.0.to_string()),
            trigger: status.last_rotation_trigger.map(|t| t.as_str().to_string()),
            next_rotation: status.next_rotation_time.map(|t| t.0.to_string()),
            previous_hint: status
                .previous_secret
                .as_ref()
                .map(|p| p.client_secret_hint.clone()),
            previous_expires_at: status
                .previous_secret
                .as_ref()
                .map(|p| p.expires_at.0.to_string()),
            ready: ready.map_or_else(|| "Unknown".to_string(), |c| c.status.clone()),
            reason: ready.map(|c| c.reason.clone()).filter(|r| !r.is_empty()),
            message: ready.map(|c| c.message.clone()).filter(|m| !m.is_empty()),
        }
    }

    /// `True`, or `False (SecretConflict)`: the Ready column.
    pub fn ready_text(&self) -> String {
        match (&self.reason, self.ready.as_str()) {
            (Some(reason), status) if status != "True" => format!("{status} ({reason})"),
            (_, status) => status.to_string(),
        }
    }
}

/// Left-aligned columns separated by three spaces, as `kubectl get` prints them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    push_line(&mut out, &widths, header.iter().copied());
    for row in rows {
        push_line(&mut out, &widths, row.iter().map(String::as_str));
    }
    out
}

fn push_line<'a>(out: &mut String, widths: &[usize], cells: impl Iterator<Item = &'a str>) {
    let mut text = String::new();
    for (i, (cell, w)) in cells.zip(widths).enumerate() {
        if i > 0 {
            text.push_str("   ");
        }
        let _ = write!(text, "{cell:<width$}", width = *w);
    }
    out.push_str(text.trim_end());
    out.push('\n');
}

/// The `status` table; with a NAMESPACE column when the apps come from several namespaces. The
/// last column, PREVIOUS EXPIRES, is empty for an app without a previous secret.
pub fn status_table(rows: &[AppRow], with_namespace: bool) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let mut header = vec![
        "NAME",
        "APP ID",
        "CLIENT ID",
        "HINT",
        "LAST ROTATION",
        "TRIGGER",
        "NEXT ROTATION",
        "READY",
        "PREVIOUS EXPIRES",
    ];
    if with_namespace {
        header.insert(0, "NAMESPACE");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![
                r.name.clone(),
                dash(&r.app_id),
                dash(&r.client_id),
                dash(&r.hint),
                dash(&r.last_rotation),
                dash(&r.trigger),
                dash(&r.next_rotation),
                r.ready_text(),
                r.previous_expires_at.clone().unwrap_or_default(),
            ];
            if with_namespace {
                cells.insert(0, r.namespace.clone());
            }
            cells
        })
        .collect();
    table(&header, &cells)
}

/// A fresh value for the `oauthapp.io/rotate` annotation: never used before, so the operator
/// rotates exactly once for it.
pub fn rotate_nonce() -> String {
    format!("kubectl-oauthapp-{}", Uuid::from_u128(rand::random()).simple())
}

/// The merge patch that requests a rotation: `oauthapp.io/rotate` set to `nonce` and, with
/// `revoke_previous`, `oauthapp.io/rotate-revoke` set to the same nonce (the previous secret is
/// invalid at once, for this rotation only). Without it the patch removes
/// `oauthapp.io/rotate-revoke`, so a value left from an earlier revocation (`"true"`, the older
/// form) never makes this routine rotation revoke.
pub fn rotate_patch(nonce: &str, revoke_previous: bool) -> serde_json::Value {
    let revoke = if revoke_previous {
        serde_json::Value::from(nonce)
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({
        "metadata": {
            "annotations": {
                ROTATE_ANNOTATION: nonce,
                ROTATE_REVOKE_ANNOTATION: revoke,
            }
        }
    })
}

/// After a rotation: when the replaced secret stays valid, until when (`None`: it is invalid
/// already: revoked, or no grace period).
pub fn previous_kept_until(app: &OAuthApp, now: jiff::Timestamp) -> Option<String> {
    let status = app.status.as_ref()?;
    status
        .previous_secret
        .as_ref()
        .filter(|p| Some(&p.rotation_id) != status.rotation_id.as_ref() && now < p.expires_at.0)
        .map(|p| p.expires_at.0.to_string())
}

/// True once the operator has acted on the rotate annotation value `nonce`.
pub fn rotation_done(app: &OAuthApp, nonce: &str) -> bool {
    app.status
        .as_ref()
        .and_then(|s| s.observed_rotate_token.as_deref())
        == Some(nonce)
}

/// What `find` was given, once parsed: an app id (or uid) names one resource; anything else may
/// be a client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindKey {
    Uid(Uuid),
    ClientId(String),
}

impl FindKey {
    pub fn parse(s: &str) -> FindKey {
        match crate::model::id::decode(s) {
            Ok(uid) => FindKey::Uid(uid),
            Err(_) => FindKey::ClientId(s.to_string()),
        }
    }

    /// True when `app` is the one this key names. A client id matches `status.clientId`, or
    /// `spec.clientId` before the operator has written a status.
    pub fn matches(&self, app: &OAuthApp) -> bool {
        match self {
            FindKey::Uid(uid) => {
                app.metadata.uid.as_deref().and_then(|u| Uuid::parse_str(u).ok()) == Some(*uid)
            }
            FindKey::ClientId(id) => {
                let status = app.status.as_ref().and_then(|s| s.client_id.as_deref());
                status.or(app.spec.client_id.as_deref()) == Some(id.as_str())
            }
        }
    }
}

/// The answer of `verify`.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// The secret is the app's current one.
    Current,
    /// It is the previous one, still valid until `expires_at` (`spec.rotation.gracePeriod`).
    Previous { expires_at: String },
    /// It is not (or is not a client secret at all).
    NoMatch { why: Option<String> },
}

/// Why `verify` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("app {0} has no status.clientSecretHash yet: is the operator running?")]
    NoHash(String),
    /// The cluster is untrusted input: a hash asking for more work than any the operator writes
    /// is refused, not computed.
    #[error(
        "refusing to verify against app {app}: its {field} asks for argon2 m={m_cost_kib} KiB, t={t_cost}, p={p_cost}, over the caps (m<={max_m} KiB, t<={max_t}, p<={max_p}); the operator never writes such a hash, so the status was tampered with"
    )]
    TooExpensive {
        app: String,
        field: &'static str,
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
        max_m: u32,
        max_t: u32,
        max_p: u32,
    },
    #[error("app {app}'s {field} is unusable: {source}")]
    BadHash {
        app: String,
        field: &'static str,
        #[source]
        source: HashError,
    },
}

/// Checks `presented` (read from stdin, surrounding whitespace already trimmed) against the
/// app's current status hash and, while it has not expired at `now`, its previous secret's hash,
/// locally. A string that is not a client secret at all is a "no match" without running argon2.
/// Both hashes are untrusted: one asking for more work than the caps is refused, not computed.
pub fn verify(
    app_name: &str,
    presented: &str,
    hash: Option<&str>,
    previous: Option<&PreviousSecret>,
    now: jiff::Timestamp,
) -> Result<Verdict, VerifyError> {
    let hash = hash.ok_or_else(|| VerifyError::NoHash(app_name.to_string()))?;
    if let Err(e) = secret::check_format(presented) {
        return Ok(Verdict::NoMatch {
            why: Some(format!("not a client secret: {e}")),
        });
    }
    if check(app_name, "status.clientSecretHash", presented, hash)? {
        return Ok(Verdict::Current);
    }
    if let Some(p) = previous.filter(|p| now < p.expires_at.0)
        && check(
            app_name,
            "status.previousSecret.clientSecretHash",
            presented,
            &p.client_secret_hash,
        )?
    {
        return Ok(Verdict::Previous {
            expires_at: p.expires_at.0.to_string(),
        });
    }
    Ok(Verdict::NoMatch { why: None })
}

fn check(app_name: &str, field: &'static str, presented: &str, hash: &str) -> Result<bool, VerifyError> {
    match secret::verify(presented, hash) {
        Ok(matched) => Ok(matched),
        Err(HashError::ParamsTooExpensive {
            m_cost_kib,
            t_cost,
            p_cost,
        }) => Err(VerifyError::TooExpensive {
            app: app_name.to_string(),
            field,
            m_cost_kib,
            t_cost,
            p_cost,
            max_m: secret::MAX_M_COST_KIB,
            max_t: secret::MAX_T_COST,
            max_p: secret::MAX_P_COST,
        }),
        Err(source) => Err(VerifyError::BadHash {
            app: app_name.to_string(),
            field,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::crd::{OAuthAppSpec, OAuthAppStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).expect("a time")
    }

    fn cheap_hash(secret: &secret::ClientSecret) -> String {
        let params = secret::HashParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        secret::hash(secret.expose(), &params).expect("hash")
    }

    fn previous(hash: &str, expires_at: jiff::Timestamp) -> PreviousSecret {
        PreviousSecret {
            rotation_id: "rot-old".into(),
            client_secret_hash: hash.into(),
            client_secret_hint: "oas_Old1...Zz99".into(),
            expires_at: Time(expires_at),
        }
    }

    fn app(name: &str, status: Option<OAuthAppStatus>) -> OAuthApp {
        let mut app = OAuthApp::new(name, OAuthAppSpec::default());
        app.metadata.namespace = Some("team-a".into());
        app.metadata.uid = Some("6f1c7a52-3f5e-4f0b-9a57-6c1f3c1b2d4e".into());
        app.status = status;
        app
    }

    fn ready(status: &str, reason: &str) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        }
    }

    #[test]
    fn a_table_aligns_columns_and_shows_the_ready_reason_when_not_ready() {
        let ok = app(
            "billing",
            Some(OAuthAppStatus {
                client_secret_hint: Some("oas_AbCd...Xz12".into()),
                conditions: vec![ready("True", "SecretReady")],
                ..Default::default()
            }),
        );
        let broken = app(
            "a-much-longer-name",
            Some(OAuthAppStatus {
                conditions: vec![ready("False", "SecretConflict")],
                ..Default::default()
            }),
        );
        let text = status_table(&[AppRow::of(&ok), AppRow::of(&broken)], false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME                 APP ID"), "{text}");
        assert!(lines[1].ends_with("   True"), "{text}");
        assert!(lines[2].ends_with("   False (SecretConflict)"), "{text}");
        // The app id comes from the uid when the status has none yet.
        let id = app_id(&ok).expect("an app id");
        assert!(lines[1].contains(&id), "{text}");
        let with_ns = status_table(&[AppRow::of(&ok)], true);
        assert!(with_ns.starts_with("NAMESPACE   NAME"), "{with_ns}");
        assert!(
            with_ns
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("team-a      billing"))
        );
    }

    #[test]
    fn an_app_without_status_is_ready_unknown() {
        let row = AppRow::of(&app("new", None));
        assert_eq!(row.ready_text(), "Unknown");
        assert_eq!(row.hint, None);
    }

    #[test]
    fn nonces_are_fresh_and_done_only_when_observed() {
        let (a, b) = (rotate_nonce(), rotate_nonce());
        assert_ne!(a, b);
        let mut acted = app(
            "x",
            Some(OAuthAppStatus {
                observed_rotate_token: Some(a.clone()),
                ..Default::default()
            }),
        );
        assert!(rotation_done(&acted, &a));
        assert!(!rotation_done(&acted, &b));
        acted.status = None;
        assert!(!rotation_done(&acted, &a));
    }

    #[test]
    fn find_takes_an_app_id_a_uid_or_a_client_id() {
        let a = app(
            "x",
            Some(OAuthAppStatus {
                client_id: Some("billing-portal".into()),
                ..Default::default()
            }),
        );
        let id = app_id(&a).expect("app id");
        assert!(FindKey::parse(&id).matches(&a));
        assert!(FindKey::parse("6f1c7a52-3f5e-4f0b-9a57-6c1f3c1b2d4e").matches(&a));
        assert!(FindKey::parse("billing-portal").matches(&a));
        assert!(!FindKey::parse("other").matches(&a));
        assert!(!FindKey::parse("app_1").matches(&a));
    }

    #[test]
    fn verify_answers_match_no_match_and_refuses_expensive_hashes() {
        let secret = secret::ClientSecret::generate().expect("secret");
        let params = secret::HashParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let hash = secret::hash(secret.expose(), &params).expect("hash");
        assert_eq!(
            verify("a", secret.expose(), Some(&hash), None, now()).ok(),
            Some(Verdict::Current)
        );
        let other = secret::ClientSecret::generate().expect("secret");
        assert_eq!(
            verify("a", other.expose(), Some(&hash), None, now()).ok(),
            Some(Verdict::NoMatch { why: None })
        );
        assert!(matches!(
            verify("a", "hunter2", Some(&hash), None, now()),
            Ok(Verdict::NoMatch { why: Some(_) })
        ));
        assert!(matches!(
            verify("a", secret.expose(), None, None, now()),
            Err(VerifyError::NoHash(_))
        ));
        // A hash asking for 4 GiB of memory is refused before any argon2 work.
        let greedy = hash.replacen("m=64", "m=4194304", 1);
        let err = verify("a", secret.expose(), Some(&greedy), None, now()).expect_err("refused");
        assert!(matches!(err, VerifyError::TooExpensive { .. }), "{err}");
        assert!(err.to_string().contains("refusing to verify"), "{err}");
    }

    #[test]
    fn verify_accepts_the_previous_secret_only_until_it_expires() {
        let (current, old) = (
            secret::ClientSecret::generate().expect("secret"),
            secret::ClientSecret::generate().expect("secret"),
        );
        let (hash, old_hash) = (cheap_hash(&current), cheap_hash(&old));
        let later = now() + jiff::SignedDuration::from_secs(600);
        let kept = previous(&old_hash, later);
        assert_eq!(
            verify("a", old.expose(), Some(&hash), Some(&kept), now()).ok(),
            Some(Verdict::Previous {
                expires_at: later.to_string()
            })
        );
        assert_eq!(
            verify("a", current.expose(), Some(&hash), Some(&kept), now()).ok(),
            Some(Verdict::Current)
        );
        // At and after its expiry the previous secret is no match, whatever the status says.
        for at in [later, later + jiff::SignedDuration::from_secs(1)] {
            assert_eq!(
                verify("a", old.expose(), Some(&hash), Some(&kept), at).ok(),
                Some(Verdict::NoMatch { why: None })
            );
        }
        let stranger = secret::ClientSecret::generate().expect("secret");
        assert_eq!(
            verify("a", stranger.expose(), Some(&hash), Some(&kept), now()).ok(),
            Some(Verdict::NoMatch { why: None })
        );
        // The previous hash is as untrusted as the current one.
        let greedy = previous(&old_hash.replacen("m=64", "m=4194304", 1), later);
        let err = verify("a", stranger.expose(), Some(&hash), Some(&greedy), now()).expect_err("refused");
        assert!(matches!(err, VerifyError::TooExpensive { .. }), "{err}");
        assert!(
            err.to_string().contains("status.previousSecret.clientSecretHash"),
            "{err}"
        );
        // An expired previous hash is not even looked at.
        let expired_greedy = previous(&old_hash.replacen("m=64", "m=4194304", 1), now());
        assert_eq!(
            verify("a", stranger.expose(), Some(&hash), Some(&expired_greedy), now()).ok(),
            Some(Verdict::NoMatch { why: None })
        );
    }

    #[test]
    fn the_rotate_patch_sets_or_removes_the_revoke_annotation() {
        let revoking = rotate_patch("n1", true);
        assert_eq!(
            revoking,
            serde_json::json!({"metadata": {"annotations": {
                "oauthapp.io/rotate": "n1",
                "oauthapp.io/rotate-revoke": "n1",
            }}})
        );
        // Without the flag the patch carries an explicit null: a merge patch removes the key.
        let routine = rotate_patch("n2", false);
        assert_eq!(
            routine,
            serde_json::json!({"metadata": {"annotations": {
                "oauthapp.io/rotate": "n2",
                "oauthapp.io/rotate-revoke": null,
            }}})
        );
    }

    #[test]
    fn status_shows_the_previous_expiry_and_rotate_says_whether_it_was_kept() {
        let later = now() + jiff::SignedDuration::from_secs(600);
        let with_previous = app(
            "billing",
            Some(OAuthAppStatus {
                rotation_id: Some("rot-new".into()),
                previous_secret: Some(Box::new(previous("$argon2id$x", later))),
                conditions: vec![ready("True", "SecretReady")],
                ..Default::default()
            }),
        );
        let without = app(
            "other",
            Some(OAuthAppStatus {
                rotation_id: Some("rot-1".into()),
                conditions: vec![ready("True", "SecretReady")],
                ..Default::default()
            }),
        );
        let row = AppRow::of(&with_previous);
        assert_eq!(row.previous_hint.as_deref(), Some("oas_Old1...Zz99"));
        assert_eq!(row.previous_expires_at, Some(later.to_string()));
        let text = status_table(&[row, AppRow::of(&without)], false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("   READY   PREVIOUS EXPIRES"), "{text}");
        assert!(lines[1].ends_with(&format!("   True    {later}")), "{text}");
        assert!(lines[2].ends_with("   True"), "{text}");

        assert_eq!(
            previous_kept_until(&with_previous, now()),
            Some(later.to_string())
        );
        assert_eq!(previous_kept_until(&with_previous, later), None);
        assert_eq!(previous_kept_until(&without, now()), None);
    }
}
