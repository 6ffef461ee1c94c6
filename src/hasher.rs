//! argon2id off the async executor, with bounded parallelism.
//!
//! Hashing takes tens of milliseconds of CPU and ~19 MiB of memory per call. Running it inline
//! would stall every task on the worker thread; running it unbounded on the blocking pool (512
//! threads) would let a burst of new apps use gigabytes. So: `spawn_blocking`, at most `permits`
//! at a time (one per core by default).

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::error::Error;
use crate::secret::{self, ClientSecret, HashMemory, HashParams};

#[derive(Clone)]
pub struct Hasher {
    params: HashParams,
    permits: Arc<Semaphore>,
    /// Working memory of the hashes not running now (at most one per permit).
    memory: Arc<Mutex<Vec<HashMemory>>>,
    /// A hash of a random secret nobody knows, checked in place of an unknown app's so that an
    /// unknown client id costs what a known one does.
    dummy: Arc<tokio::sync::OnceCell<String>>,
}

impl Hasher {
    pub fn new(params: HashParams, parallelism: usize) -> Self {
        Self {
            params,
            permits: Arc::new(Semaphore::new(parallelism.max(1))),
            memory: Arc::default(),
            dummy: Arc::default(),
        }
    }

    /// Checks `plaintext` against every hash of `phcs` (all of them, whatever matches first, so
    /// the work does not depend on which one matches), or against a dummy when `phcs` is empty.
    /// The answer has one entry per hash of `phcs`.
    pub async fn verify_all(&self, plaintext: String, phcs: Vec<String>) -> Result<Vec<bool>, Error> {
        let params = self.params;
        let checked = if phcs.is_empty() {
            let dummy = self
                .dummy
                .get_or_try_init(|| async { self.generate().await.map(|(_, phc)| phc) })
                .await?
                .clone();
            vec![dummy]
        } else {
            phcs.clone()
        };
        let matches = self
            .blocking(move |memory| {
                let well_formed = secret::check_format(&plaintext).is_ok();
                Ok(checked
                    .iter()
                    .map(|phc| {
                        well_formed && secret::verify_with(&plaintext, phc, &params, memory).unwrap_or(false)
                    })
                    .collect::<Vec<bool>>())
            })
            .await?;
        Ok(if phcs.is_empty() { Vec::new() } else { matches })
    }

    pub fn params(&self) -> HashParams {
        self.params
    }

    /// A fresh secret and its PHC hash.
    pub async fn generate(&self) -> Result<(ClientSecret, String), Error> {
        let params = self.params;
        self.blocking(move |memory| {
            let s = ClientSecret::generate()?;
            let phc = secret::hash_in(s.expose(), &params, memory)?;
            Ok((s, phc))
        })
        .await
    }

    /// Whether `plaintext` verifies against `phc`. A malformed hash, or one made with other
    /// parameters than this hasher's (never computed: its cost is the hash string's choice),
    /// counts as "does not verify".
    pub async fn verify(&self, plaintext: String, phc: String) -> Result<bool, Error> {
        if !secret::uses_params(&phc, &self.params) {
            return Ok(false);
        }
        let params = self.params;
        self.blocking(move |memory| {
            Ok(secret::check_format(&plaintext).is_ok()
                && secret::verify_with(&plaintext, &phc, &params, memory).unwrap_or(false))
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut HashMemory) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("hasher closed".into()))?;
        let pool = self.memory.clone();
        tokio::task::spawn_blocking(move || {
            let take = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut memory = take.unwrap_or_default();
            let result = f(&mut memory);
            pool.lock().unwrap_or_else(|e| e.into_inner()).push(memory);
            result
        })
        .await
        .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))?
    }
}
