//! The floors every result is compared with, measured in the same run: one argon2id hash with
//! the configured parameters (the operator's own code, working memory reused as the operator
//! does), and one write round-trip from a plain kube client (a Secret replace and an OAuthApp
//! status replace, alternately, each carrying what the operator's writes carry).
//!
//! Sampled at the start on a quiet machine, then again between the calls of the latency runs,
//! so that the floors see the same machine (a shared VM's speed drifts by tens of percent
//! within minutes) as the figures compared with them.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use oauthapp_operator::model::crd::{OAuthApp, OAuthAppStatus};
use oauthapp_operator::model::secret::{self, HashMemory, HashParams};
use serde_json::json;

use crate::ms;

const SECRET: &str = "floor-oauth-client";
const APP: &str = "floor";

pub struct Floors {
    params: HashParams,
    memory: Option<HashMemory>,
    phc: String,
    secrets: Api<Secret>,
    apps: Api<OAuthApp>,
    secret: Secret,
    app: OAuthApp,
    writes: usize,
    pub hash_ms: Vec<f64>,
    pub secret_ms: Vec<f64>,
    pub status_ms: Vec<f64>,
}

impl Floors {
    /// Creates the floor objects in `ns` (a namespace no operator watches) and warms up.
    pub async fn new(client: &Client, ns: &str, params: HashParams) -> anyhow::Result<Floors> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let apps: Api<OAuthApp> = Api::namespaced(client.clone(), ns);
        let pp = PostParams::default();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(SECRET.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let secret = secrets.create(&pp, &secret).await?;
        let app = apps.create(&pp, &crate::new_app(APP)).await?;
        let mut floors = Floors {
            params,
            memory: Some(HashMemory::default()),
            phc: String::new(),
            secrets,
            apps,
            secret,
            app,
            writes: 0,
            hash_ms: Vec::new(),
            secret_ms: Vec::new(),
            status_ms: Vec::new(),
        };
        for _ in 0..3 {
            floors.sample().await?;
        }
        floors.hash_ms.clear();
        floors.secret_ms.clear();
        floors.status_ms.clear();
        Ok(floors)
    }

    /// One hash, one Secret write, one status write.
    pub async fn sample(&mut self) -> anyhow::Result<()> {
        self.sample_hash().await?;
        self.sample_writes().await
    }

    async fn sample_hash(&mut self) -> anyhow::Result<()> {
        let params = self.params;
        let mut memory = self.memory.take().unwrap_or_default();
        let (took, phc, memory) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let phc = secret::hash_in("oas_floor", &params, &mut memory);
            (ms(started.elapsed()), phc, memory)
        })
        .await?;
        self.memory = Some(memory);
        self.phc = phc?;
        self.hash_ms.push(took);
        Ok(())
    }

    async fn sample_writes(&mut self) -> anyhow::Result<()> {
        let pp = PostParams::default();
        self.writes += 1;
        let i = self.writes;
        let rotation_id = format!("{:032x}", crate::rand_u128());
        let now = jiff::Timestamp::now().round(jiff::Unit::Second)?.to_string();
        self.secret.metadata.annotations = Some(BTreeMap::from([
            ("oauthapp.io/rotation-id".to_string(), rotation_id.clone()),
            ("oauthapp.io/client-secret-hash".to_string(), self.phc.clone()),
            (
                "oauthapp.io/client-secret-hint".to_string(),
                "oas_AbCd...Xz12".to_string(),
            ),
            ("oauthapp.io/rotation-trigger".to_string(), "Api".to_string()),
            ("oauthapp.io/rotated-at".to_string(), now.clone()),
            ("oauthapp.io/rotation-count".to_string(), i.to_string()),
        ]));
        self.secret.metadata.managed_fields = None;
        self.secret.data = Some(BTreeMap::from([
            ("client_id".to_string(), ByteString(b"floor-client".to_vec())),
            (
                "client_secret".to_string(),
                ByteString(format!("oas_{rotation_id}0123456789ab").into_bytes()),
            ),
        ]));
        let started = Instant::now();
        self.secret = self.secrets.replace(SECRET, &pp, &self.secret).await?;
        self.secret_ms.push(ms(started.elapsed()));

        self.app.status = Some(serde_json::from_value::<OAuthAppStatus>(json!({
            "appId": "app_7n42DGM5Tflk9n8mt7Fhc7",
            "clientId": "floor-client",
            "secretName": SECRET,
            "clientSecretHash": self.phc,
            "clientSecretHint": "oas_AbCd...Xz12",
            "rotationId": rotation_id,
            "rotationCount": i,
            "lastRotationTime": now,
            "lastRotationTrigger": "Api",
            "secretResourceVersion": self.secret.resource_version(),
            "observedGeneration": 1,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "SecretReady",
                "message": "the Secret holds the current secret",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1
            }],
        }))?);
        self.app.metadata.managed_fields = None;
        let started = Instant::now();
        self.app = self.apps.replace_status(APP, &pp, &self.app).await?;
        self.status_ms.push(ms(started.elapsed()));
        Ok(())
    }

    /// Every write sample, Secret and status alike.
    pub fn write_ms(&self) -> Vec<f64> {
        self.secret_ms.iter().chain(&self.status_ms).copied().collect()
    }
}
