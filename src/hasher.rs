//! argon2id off the async executor, with bounded parallelism.
//!
//! Hashing takes tens of milliseconds of CPU and ~19 MiB of memory per call. Running it inline
//! would stall every task on the worker thread; running it unbounded on the blocking pool (512
//! threads) would let a burst of new apps use gigabytes. So: `spawn_blocking`, at most `permits`
//! at a time (one per core by default).

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::Error;
use crate::secret::{self, ClientSecret, HashParams};

#[derive(Clone)]
pub struct Hasher {
    params: HashParams,
    permits: Arc<Semaphore>,
}

impl Hasher {
    pub fn new(params: HashParams, parallelism: usize) -> Self {
        Self {
            params,
            permits: Arc::new(Semaphore::new(parallelism.max(1))),
        }
    }

    pub fn params(&self) -> HashParams {
        self.params
    }

    /// A fresh secret and its PHC hash.
    pub async fn generate(&self) -> Result<(ClientSecret, String), Error> {
        let params = self.params;
        self.blocking(move || {
            let s = ClientSecret::generate()?;
            let phc = secret::hash(s.expose(), &params)?;
            Ok((s, phc))
        })
        .await
    }

    /// Whether `plaintext` verifies against `phc`. A malformed hash counts as "does not verify".
    pub async fn verify(&self, plaintext: String, phc: String) -> Result<bool, Error> {
        self.blocking(move || {
            Ok(secret::check_format(&plaintext).is_ok() && secret::verify(&plaintext, &phc).unwrap_or(false))
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("hasher closed".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))?
    }
}
