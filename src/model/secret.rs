//! OAuth client secrets: generation, offline format checks, hints, and argon2id hashing.
//!
//! A secret looks like `oas_` + 43 random base62 characters + a 6-character base62 CRC32 of
//! everything before it. Each part has a job:
//!
//! - The prefix lets secret scanners (GitHub push protection, gitleaks, ...) find leaked
//!   secrets. It also tells a human what kind of value they hold.
//! - 43 base62 characters carry about 256 bits of entropy (43 * log2(62) ≈ 256.03).
//! - The checksum lets scanners and our own API reject typos and random look-alikes offline,
//!   with no database lookup and no argon2 work. CRC32 is not a security measure: anyone can
//!   compute it. It only makes well-formedness cheap to check.
//!
//! Only the argon2id hash of a secret is stored. The plaintext exists once, when it is handed
//! to the user, so [`ClientSecret`] makes it hard to log by accident.

use core::fmt;

use allocator_api2::alloc::System;
use argon2::password_hash::{self, phc};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use rand::TryCryptoRng;
use rand::rngs::{SysError, SysRng};

/// Marks a string as a client secret of this operator, for scanners and humans.
pub const SECRET_PREFIX: &str = "oas_";

/// Number of random base62 characters: about 256 bits of entropy.
pub const RANDOM_LEN: usize = 43;

/// Number of base62 characters in the checksum. 62^6 > 2^32, so any CRC32 fits.
pub const CHECKSUM_LEN: usize = 6;

/// Total length of a secret, in bytes (all characters are ASCII).
pub const SECRET_LEN: usize = SECRET_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;

/// How many random characters a hint shows. Together with the checksum characters it shows,
/// a hint leaks about 48 of the 256 bits. That is enough to tell secrets apart in a list and
/// leaves far too many bits for guessing.
const HINT_HEAD: usize = 4;
/// How many characters from the end of the secret a hint shows.
const HINT_TAIL: usize = 4;

/// Largest argon2 memory cost, in KiB, that [`hash`] will use or [`verify`] will accept
/// (2 GiB, the first recommendation of RFC 9106). [`verify`] reads its parameters from the
/// stored PHC string. Without a cap, a tampered or corrupted hash could make the operator try
/// to allocate up to 4 TiB.
pub const MAX_M_COST_KIB: u32 = 2 * 1024 * 1024;

/// Largest argon2 time cost that [`hash`] will use or [`verify`] will accept. It bounds CPU
/// time for the same reason as [`MAX_M_COST_KIB`].
pub const MAX_T_COST: u32 = 32;

/// Largest argon2 parallelism that [`hash`] will use or [`verify`] will accept. It bounds
/// work for the same reason as [`MAX_M_COST_KIB`].
pub const MAX_P_COST: u32 = 64;

/// The base62 digits, in value order.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Random bytes at or above this value are thrown away. 248 = 4 * 62, so `byte % 62` is
/// exactly uniform over the bytes that are kept (rejection sampling, no modulo bias).
const REJECT_AT: u8 = 248;

/// A plaintext client secret.
///
/// It implements neither `Display` nor `Clone`, and its `Debug` output is redacted. A secret
/// should only leave this type through an explicit [`ClientSecret::expose`] call, and only
/// toward the user or the Kubernetes Secret that hands it over.
///
/// Every value has the documented format: it is either generated here or checked by
/// [`check_format`] on the way in.
pub struct ClientSecret(String);

impl ClientSecret {
    /// Draws a new secret straight from the operating system's CSPRNG.
    ///
    /// The OS source is used, not a userspace generator, so a secret never depends on state
    /// that a fork or a snapshot could duplicate.
    ///
    /// # Errors
    ///
    /// Fails only if the OS random source fails. That is very rare, but it is reported rather
    /// than turned into a panic inside the reconciler.
    pub fn generate() -> Result<Self, GenerateError> {
        generate_with(&mut SysRng).map(Self).map_err(GenerateError)
    }

    /// The plaintext. Callers need it exactly twice: to hand the secret to the user and to
    /// hash it. Keep the result out of logs and error messages.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, non-secret label for this secret, such as `oas_AbCd...Xz12`. It lets users
    /// and operators tell which secret is which in UIs and logs.
    #[must_use]
    pub fn hint(&self) -> String {
        // A ClientSecret always has the right format, so `hint` never returns None here.
        hint(&self.0).unwrap_or_default()
    }
}

// The plaintext is zeroed when dropped. Not observable from a test without `unsafe` (the buffer
// is freed right after); `zeroize` is the crate made for this, and its writes are not optimized
// away.
impl Drop for ClientSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

impl TryFrom<String> for ClientSecret {
    type Error = SecretFormatError;

    /// Wraps a secret read back from storage, such as the Kubernetes Secret that holds it, so
    /// that it gets the same protection from accidental logging as a freshly generated one.
    fn try_from(value: String) -> Result<Self, Self::Error> {
        check_format(&value)?;
        Ok(Self(value))
    }
}

/// The OS random source failed while a secret was being generated.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct GenerateError(#[source] SysError);

/// Why a string is not a well-formed client secret.
///
/// No variant holds or prints any part of the checked string: what fails this check is often
/// a real secret with a typo, and error messages end up in logs and API responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretFormatError {
    /// The string does not start with `oas_`.
    #[error("client secret must start with \"oas_\"")]
    MissingPrefix,
    /// The string has the prefix but the wrong length.
    #[error("client secret must be {SECRET_LEN} bytes long, got {len}")]
    WrongLength {
        /// Length of the rejected string, in bytes.
        len: usize,
    },
    /// A byte after the prefix is not a base62 digit.
    #[error("client secret has a character outside 0-9, A-Z, a-z at byte {position}")]
    InvalidCharacter {
        /// Byte offset of the first bad character.
        position: usize,
    },
    /// The checksum does not match: the secret was mistyped, truncated and padded, or made up.
    #[error("client secret checksum does not match; it was probably mistyped or truncated")]
    ChecksumMismatch,
}

/// Checks the format of a presented secret offline: prefix, length, alphabet and checksum.
///
/// Run this before any argon2 work. Garbage and typos then get a fast, specific answer, and
/// they cannot make the operator burn CPU on hashing.
///
/// # Errors
///
/// Returns the first problem found, checked in the order above.
pub fn check_format(s: &str) -> Result<(), SecretFormatError> {
    let Some(rest) = s.strip_prefix(SECRET_PREFIX) else {
        return Err(SecretFormatError::MissingPrefix);
    };
    if s.len() != SECRET_LEN {
        return Err(SecretFormatError::WrongLength { len: s.len() });
    }
    if let Some(i) = rest.bytes().position(|b| !b.is_ascii_alphanumeric()) {
        return Err(SecretFormatError::InvalidCharacter {
            position: SECRET_PREFIX.len() + i,
        });
    }
    let (payload, sum) = s.as_bytes().split_at(SECRET_LEN - CHECKSUM_LEN);
    if checksum(payload) != sum {
        return Err(SecretFormatError::ChecksumMismatch);
    }
    Ok(())
}

/// The hint for a secret (`oas_` + 4 random characters + `...` + last 4 characters), or `None`
/// if `secret` is not well-formed.
///
/// Malformed input gets no hint. A hint of an arbitrary short string could show most of it,
/// and a hint must never show more than a small fixed part of a secret.
#[must_use]
pub fn hint(secret: &str) -> Option<String> {
    check_format(secret).ok()?;
    let head = secret.get(SECRET_PREFIX.len()..SECRET_PREFIX.len() + HINT_HEAD)?;
    let tail = secret.get(SECRET_LEN - HINT_TAIL..)?;
    Some(format!("{SECRET_PREFIX}{head}...{tail}"))
}

/// Builds a secret from `rng`. Generic so that tests can drive it with seeded or scripted
/// generators. Production code always passes the OS RNG.
fn generate_with<R: TryCryptoRng + ?Sized>(rng: &mut R) -> Result<String, R::Error> {
    let mut out = String::with_capacity(SECRET_LEN);
    out.push_str(SECRET_PREFIX);
    let mut produced = 0;
    // About 3% of bytes are rejected, so 64 bytes almost always cover all 43 characters.
    let mut buf = [0u8; 64];
    while produced < RANDOM_LEN {
        rng.try_fill_bytes(&mut buf)?;
        for &b in buf.iter().filter(|&&b| b < REJECT_AT).take(RANDOM_LEN - produced) {
            out.push(char::from(BASE62[usize::from(b % 62)]));
            produced += 1;
        }
    }
    let sum = checksum(out.as_bytes());
    out.extend(sum.iter().copied().map(char::from));
    Ok(out)
}

/// The CRC32 of `payload` in base62, left-padded with `0` to [`CHECKSUM_LEN`] characters.
fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(payload);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Argon2id cost parameters for newly hashed secrets.
///
/// Existing hashes keep the parameters they were made with ([`verify`] reads them from the PHC
/// string), but the operator verifies only hashes whose parameters it trusts
/// ([`verify_with`]): the current ones and those accepted from an earlier configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Number of passes.
    pub t_cost: u32,
    /// Degree of parallelism (lanes).
    pub p_cost: u32,
}

impl Default for HashParams {
    /// The OWASP minimum for argon2id (19 MiB, 2 passes, 1 lane). Each hash then takes tens
    /// of milliseconds, which an operator can afford per token request.
    fn default() -> Self {
        Self {
            m_cost_kib: 19_456,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

/// Why a secret could not be hashed or a hash could not be checked.
///
/// A wrong secret is not an error: [`verify`] returns `Ok(false)` for it. These variants mean
/// the configuration or the stored hash is broken. No variant contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// [`HashParams`] that argon2 rejects, such as a memory cost below 8 KiB or zero passes.
    #[error("invalid argon2 parameters: {0}")]
    InvalidParams(#[source] argon2::Error),
    /// Parameters above [`MAX_M_COST_KIB`], [`MAX_T_COST`] or [`MAX_P_COST`].
    #[error(
        "argon2 parameters m={m_cost_kib},t={t_cost},p={p_cost} exceed the allowed maximum \
         m={MAX_M_COST_KIB},t={MAX_T_COST},p={MAX_P_COST}"
    )]
    ParamsTooExpensive {
        /// Memory cost in KiB.
        m_cost_kib: u32,
        /// Number of passes.
        t_cost: u32,
        /// Degree of parallelism.
        p_cost: u32,
    },
    /// The stored hash is not a syntactically valid PHC string.
    #[error("stored hash is not a valid PHC string: {0}")]
    MalformedPhc(#[source] phc::Error),
    /// The stored PHC string has no salt or no hash output, so nothing can match it.
    #[error("stored hash is missing its salt or its output")]
    IncompletePhc,
    /// The stored hash uses an algorithm other than argon2id. We never produce those, and
    /// accepting them would allow a downgrade to argon2d or argon2i.
    #[error("stored hash does not use argon2id")]
    UnsupportedAlgorithm,
    /// The parameters in the stored PHC string are invalid for argon2.
    #[error("stored hash has invalid argon2 parameters: {0}")]
    InvalidPhcParams(#[source] password_hash::Error),
    /// The stored hash was not made with the configured parameters: never verified.
    #[error("stored hash does not use the configured argon2id parameters")]
    ForeignParams,
    /// Hashing itself failed, for example because the salt could not be drawn from the OS.
    #[error("argon2 hashing failed: {0}")]
    Hashing(#[source] password_hash::Error),
}

/// Hashes a secret for storage, as a PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
///
/// The PHC string carries the algorithm, version, parameters and a fresh 16-byte OS-random
/// salt. A stored hash can therefore be verified after the defaults change.
///
/// This takes tens of milliseconds of CPU at the default parameters. Async callers should run
/// it on a blocking thread.
///
/// # Errors
///
/// [`HashError::InvalidParams`] or [`HashError::ParamsTooExpensive`] for bad parameters, and
/// [`HashError::Hashing`] if the OS random source fails.
pub fn hash(secret: &str, params: &HashParams) -> Result<String, HashError> {
    hash_in(secret, params, &mut HashMemory::default())
}

/// argon2's working memory (`m_cost` KiB: 19 MiB at the defaults), kept from one hash to the
/// next by a caller that hashes often ([`crate::runtime::hasher::Hasher`] keeps one per worker).
///
/// Allocating it per hash costs a page fault per 4 KiB, and with glibc it fragments the heap:
/// the freed 19 MiB are reused piecemeal by long-lived small allocations, so each hash grows
/// the resident set (measured: 666 MiB after provisioning 300 apps, instead of ~60 MiB).
///
/// A buffer above 128 KiB reserves at least [`OWN_MAPPING_BYTES`] of address space (only the
/// blocks in use are touched, so only they are resident): glibc serves a request that large
/// with a mapping of its own and unmaps it on free, and never raises its dynamic mmap threshold
/// for one. A buffer of exactly the 19 MiB would be mapped the first time only: freeing it raises
/// the threshold to 19 MiB, the next one comes from a heap arena, and freed it stays resident
/// (the trim threshold becomes 38 MiB): the 109 MiB a release of idle buffers once left behind.
/// musl maps and unmaps every allocation that large anyway.
///
/// The buffer comes from the C library's allocator ([`System`]) whatever the process's global
/// allocator is: the operator's (mimalloc, `src/main.rs`) would keep a freed buffer in its
/// arena until a later purge, where `free` unmaps it at once.
pub struct HashMemory(allocator_api2::vec::Vec<argon2::Block, System>);

impl Default for HashMemory {
    fn default() -> Self {
        Self(allocator_api2::vec::Vec::new_in(System))
    }
}

/// glibc's largest dynamic mmap threshold (32 MiB on 64-bit) plus one block: see [`HashMemory`].
const OWN_MAPPING_BYTES: usize = 32 * 1024 * 1024 + argon2::Block::SIZE;
/// Below this (glibc's default mmap threshold) a buffer stays a plain allocation.
const SMALL_BUFFER_BYTES: usize = 128 * 1024;

impl HashMemory {
    fn blocks(&mut self, params: &Params) -> &mut [argon2::Block] {
        let count = params.block_count();
        if self.0.len() != count {
            // Exactly the size asked for: a smaller hash must not keep a larger buffer alive.
            let reserve = if count * argon2::Block::SIZE >= SMALL_BUFFER_BYTES {
                count.max(OWN_MAPPING_BYTES.div_ceil(argon2::Block::SIZE))
            } else {
                count
            };
            self.0 = allocator_api2::vec::Vec::with_capacity_in(reserve, System);
            self.0.resize(count, argon2::Block::new());
        }
        &mut self.0
    }
}

/// [`hash`] with caller-provided working memory.
///
/// # Errors
///
/// As [`hash`].
pub fn hash_in(secret: &str, params: &HashParams, memory: &mut HashMemory) -> Result<String, HashError> {
    check_cost(params.m_cost_kib, params.t_cost, params.p_cost)?;
    let argon2_params = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, None)
        .map_err(HashError::InvalidParams)?;
    use rand::TryRng as _;
    let mut salt = [0u8; phc::Salt::RECOMMENDED_LENGTH];
    SysRng
        .try_fill_bytes(&mut salt)
        .map_err(|_| HashError::Hashing(password_hash::Error::Crypto))?;
    let salt = phc::Salt::new(&salt).map_err(|e| HashError::Hashing(e.into()))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, argon2_params.clone())
        .hash_password_into_with_memory(secret.as_bytes(), &salt, &mut out, memory.blocks(&argon2_params))
        .map_err(|e| HashError::Hashing(e.into()))?;
    // argon2 zeroes its own temporaries (its `zeroize` feature); the working memory is ours.
    memory.0.iter_mut().for_each(zeroize::Zeroize::zeroize);
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: phc::ParamsString::try_from(&argon2_params).map_err(HashError::Hashing)?,
        salt: Some(salt),
        hash: Some(phc::Output::new(&out).map_err(|e| HashError::Hashing(e.into()))?),
    };
    Ok(phc.to_string())
}

/// Checks a presented secret against a stored PHC string, using the parameters recorded in it.
///
/// Returns `Ok(false)` for a wrong secret, and an error only when the stored hash is
/// unusable. Callers can then answer "invalid credentials" to the client and report a broken
/// hash to the operator. The final comparison is constant-time (argon2 crate).
///
/// Like [`hash`], this is CPU heavy. Call [`check_format`] first to skip argon2 for garbage.
///
/// # Errors
///
/// Returns a [`HashError`] if `phc` is malformed, is not argon2id, or has invalid or
/// excessive parameters.
pub fn verify(secret: &str, phc: &str) -> Result<bool, HashError> {
    verify_in(secret, phc, &mut HashMemory::default())
}

/// [`verify`] with caller-provided working memory.
///
/// # Errors
///
/// As [`verify`].
pub fn verify_in(secret: &str, phc: &str, memory: &mut HashMemory) -> Result<bool, HashError> {
    let parsed = PasswordHash::new(phc).map_err(HashError::MalformedPhc)?;
    if parsed.algorithm.as_str() != Algorithm::Argon2id.as_str() {
        return Err(HashError::UnsupportedAlgorithm);
    }
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(HashError::IncompletePhc);
    };
    let params = Params::try_from(&parsed).map_err(HashError::InvalidPhcParams)?;
    check_cost(params.m_cost(), params.t_cost(), params.p_cost())?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| HashError::InvalidPhcParams(e.into()))?,
        None => Version::default(),
    };
    let mut out = [0u8; phc::Output::MAX_LENGTH];
    let out = out.get_mut(..expected.len()).ok_or(HashError::IncompletePhc)?;
    Argon2::new(Algorithm::Argon2id, version, params.clone())
        .hash_password_into_with_memory(secret.as_bytes(), salt, out, memory.blocks(&params))
        .map_err(|e| HashError::Hashing(e.into()))?;
    // `Output`'s equality is constant-time.
    let computed = phc::Output::new(out).map_err(|e| HashError::Hashing(e.into()))?;
    Ok(computed == *expected)
}

/// Whether `phc` is an argon2id v0x13 hash made with exactly `params` (and the default output
/// length). The operator verifies nothing else: a hash string from a Secret or a status is
/// untrusted input, and its parameters decide how much memory and time a verification costs.
pub fn uses_params(phc: &str, params: &HashParams) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(found) = Params::try_from(&parsed) else {
        return false;
    };
    parsed.algorithm.as_str() == Algorithm::Argon2id.as_str()
        && parsed.version == Some(Version::V0x13.into())
        && parsed.salt.is_some()
        && parsed.hash.as_ref().map(|h| h.len()) == Some(Params::DEFAULT_OUTPUT_LEN)
        && (found.m_cost(), found.t_cost(), found.p_cost())
            == (params.m_cost_kib, params.t_cost, params.p_cost)
}

/// Whether `phc` uses one of `trusted` exactly ([`uses_params`]).
pub fn uses_trusted_params(phc: &str, trusted: &[HashParams]) -> bool {
    trusted.iter().any(|params| uses_params(phc, params))
}

/// [`verify_in`] for the operator itself: a hash that does not use exactly one of `trusted`
/// ([`uses_trusted_params`]) is refused with [`HashError::ForeignParams`] before any memory is
/// taken.
///
/// # Errors
///
/// [`HashError::ForeignParams`], or as [`verify`].
pub fn verify_with(
    secret: &str,
    phc: &str,
    trusted: &[HashParams],
    memory: &mut HashMemory,
) -> Result<bool, HashError> {
    if !uses_trusted_params(phc, trusted) {
        return Err(HashError::ForeignParams);
    }
    verify_in(secret, phc, memory)
}

/// Parses `m=KIB,t=ITERATIONS,p=LANES` (the PHC string's own notation, in any order).
///
/// # Errors
///
/// A message naming what is wrong.
pub fn parse_params(s: &str) -> Result<HashParams, String> {
    let (mut m, mut t, mut p) = (None, None, None);
    for part in s.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected m=KIB,t=ITERATIONS,p=LANES"))?;
        let v: u32 = v
            .parse()
            .map_err(|_| format!("{s:?}: {k}={v:?} is not a number"))?;
        let slot = match k {
            "m" => &mut m,
            "t" => &mut t,
            "p" => &mut p,
            _ => return Err(format!("{s:?}: unknown parameter {k:?} (m, t and p are)")),
        };
        if slot.replace(v).is_some() {
            return Err(format!("{s:?}: {k} given twice"));
        }
    }
    match (m, t, p) {
        (Some(m_cost_kib), Some(t_cost), Some(p_cost)) => {
            let params = HashParams {
                m_cost_kib,
                t_cost,
                p_cost,
            };
            check_cost(m_cost_kib, t_cost, p_cost).map_err(|e| format!("{s:?}: {e}"))?;
            Ok(params)
        }
        _ => Err(format!("{s:?}: expected m=KIB,t=ITERATIONS,p=LANES")),
    }
}

/// Enforces [`MAX_M_COST_KIB`], [`MAX_T_COST`] and [`MAX_P_COST`].
fn check_cost(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> Result<(), HashError> {
    if m_cost_kib > MAX_M_COST_KIB || t_cost > MAX_T_COST || p_cost > MAX_P_COST {
        return Err(HashError::ParamsTooExpensive {
            m_cost_kib,
            t_cost,
            p_cost,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::convert::Infallible;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Known-good secrets, with checksums computed independently (Python `zlib.crc32`).
    const VECTORS: [&str; 3] = [
        "oas_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA3hvAhE",
        "oas_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg1ypCFO",
        // The CRC32 here is below 62^5, so this one exercises the '0' padding.
        "oas_33333333333333333333333333333333333333333330PzaU6",
    ];

    /// Cheap parameters so that the tests stay fast.
    const FAST: HashParams = HashParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    fn new_secret() -> ClientSecret {
        ClientSecret::generate().unwrap()
    }

    /// Replaces the byte at `i` (ASCII input only).
    fn with_byte(s: &str, i: usize, b: u8) -> String {
        let mut bytes = s.as_bytes().to_vec();
        bytes[i] = b;
        String::from_utf8(bytes).unwrap()
    }

    /// A scripted RNG: serves the given bytes in a loop. Marked crypto only so that it can
    /// drive `generate_with` in tests.
    struct Scripted {
        bytes: Vec<u8>,
        pos: usize,
    }

    impl rand::TryRng for Scripted {
        type Error = Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            let mut b = [0; 4];
            self.try_fill_bytes(&mut b)?;
            Ok(u32::from_le_bytes(b))
        }
        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            let mut b = [0; 8];
            self.try_fill_bytes(&mut b)?;
            Ok(u64::from_le_bytes(b))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
            for d in dst {
                *d = self.bytes[self.pos % self.bytes.len()];
                self.pos += 1;
            }
            Ok(())
        }
    }

    impl TryCryptoRng for Scripted {}

    #[test]
    fn length_constants() {
        assert_eq!(SECRET_PREFIX, "oas_");
        assert_eq!(SECRET_LEN, 53);
    }

    #[test]
    fn vectors_pass_check_format() {
        for v in VECTORS {
            assert_eq!(v.len(), SECRET_LEN);
            assert_eq!(check_format(v), Ok(()), "{v}");
        }
    }

    #[test]
    fn generated_secret_has_the_documented_format() {
        for _ in 0..50 {
            let secret = new_secret();
            let s = secret.expose();
            assert_eq!(s.len(), SECRET_LEN);
            assert!(s.starts_with(SECRET_PREFIX));
            assert!(s[SECRET_PREFIX.len()..].bytes().all(|b| BASE62.contains(&b)));
            let (payload, sum) = s.split_at(SECRET_LEN - CHECKSUM_LEN);
            assert_eq!(checksum(payload.as_bytes()), sum.as_bytes());
            assert_eq!(check_format(s), Ok(()));
        }
    }

    #[test]
    fn checksum_is_base62_crc32_padded() {
        assert_eq!(&checksum(b""), b"000000");
        // crc32("a") = 0xe8b7be43 = 3904355907 = "4GEHKN" in base62 (checked in Python).
        assert_eq!(&checksum(b"a"), b"4GEHKN");
        assert_eq!(&checksum(&VECTORS[2].as_bytes()[..47]), b"0PzaU6");
    }

    #[test]
    fn two_generated_secrets_differ() {
        assert_ne!(new_secret().expose(), new_secret().expose());
    }

    #[test]
    fn rejection_sampling_skips_high_bytes() {
        // Bytes 248..=255 must be thrown away. The kept byte 61 maps to 'z'.
        let mut rng = Scripted {
            bytes: vec![248, 249, 250, 251, 252, 253, 254, 255, 61],
            pos: 0,
        };
        let s = generate_with(&mut rng).unwrap();
        assert_eq!(&s[4..47], "z".repeat(RANDOM_LEN));
        assert_eq!(check_format(&s), Ok(()));

        // 247 is kept: 247 % 62 = 61 as well. 0 and 62 both map to '0'.
        let mut rng = Scripted {
            bytes: vec![247, 0, 62],
            pos: 0,
        };
        let s = generate_with(&mut rng).unwrap();
        assert!(s[4..47].starts_with("z00z00"));
    }

    #[test]
    fn generation_uses_whole_alphabet_evenly() {
        // Deterministic (seeded), so this cannot flake. Chi-squared over 62 buckets.
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u64; 62];
        let rounds = 2_000;
        for _ in 0..rounds {
            let s = generate_with(&mut rng).unwrap();
            for b in s[4..47].bytes() {
                let i = BASE62.iter().position(|&c| c == b).unwrap();
                counts[i] += 1;
            }
        }
        let total = (rounds * RANDOM_LEN) as f64;
        let expected = total / 62.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        // 61 degrees of freedom: p = 1e-6 is at about 125.
        assert!(chi2 < 125.0, "chi2 = {chi2}, counts = {counts:?}");
        assert!(counts.iter().all(|&c| c > 0));
    }

    #[test]
    fn check_format_rejects_wrong_prefix() {
        let v = VECTORS[0];
        for bad in [
            v.replacen("oas_", "oat_", 1),
            v.replacen("oas_", "OAS_", 1),
            v.replacen("oas_", "", 1),
            format!("x{v}"),
            String::new(),
        ] {
            assert_eq!(check_format(&bad), Err(SecretFormatError::MissingPrefix));
        }
    }

    #[test]
    fn check_format_rejects_wrong_length() {
        let v = VECTORS[0];
        assert_eq!(
            check_format(&v[..52]),
            Err(SecretFormatError::WrongLength { len: 52 })
        );
        assert_eq!(
            check_format(&format!("{v}A")),
            Err(SecretFormatError::WrongLength { len: 54 })
        );
        assert_eq!(
            check_format("oas_"),
            Err(SecretFormatError::WrongLength { len: 4 })
        );
    }

    #[test]
    fn check_format_rejects_bad_characters() {
        let v = VECTORS[0];
        for (i, b) in [(4, b'-'), (20, b'_'), (46, b' '), (52, b'='), (47, b'\n')] {
            assert_eq!(
                check_format(&with_byte(v, i, b)),
                Err(SecretFormatError::InvalidCharacter { position: i })
            );
        }
        // Non-ASCII that keeps the byte length: two bytes of 'é' replace two ASCII bytes.
        let s = format!("{}é{}", &v[..10], &v[12..]);
        assert_eq!(s.len(), SECRET_LEN);
        assert_eq!(
            check_format(&s),
            Err(SecretFormatError::InvalidCharacter { position: 10 })
        );
    }

    #[test]
    fn check_format_rejects_one_char_change() {
        let v = VECTORS[1];
        for i in SECRET_PREFIX.len()..SECRET_LEN {
            let b = if v.as_bytes()[i] == b'x' { b'y' } else { b'x' };
            assert_eq!(
                check_format(&with_byte(v, i, b)),
                Err(SecretFormatError::ChecksumMismatch),
                "position {i}"
            );
        }
    }

    #[test]
    fn format_errors_never_contain_the_input() {
        let secret = new_secret();
        let s = secret.expose();
        let inputs = [
            s.replacen("oas_", "oat_", 1),
            s[..50].to_owned(),
            format!("{s}0"),
            with_byte(s, 10, b'!'),
            with_byte(s, 10, if s.as_bytes()[10] == b'A' { b'B' } else { b'A' }),
        ];
        for input in &inputs {
            let msg = check_format(input).unwrap_err().to_string();
            assert!(!msg.contains(input.as_str()), "{msg}");
            assert!(!msg.contains(&input[4..12]), "{msg}");
            assert!(!msg.contains(&s[4..12]), "{msg}");
        }
    }

    #[test]
    fn hint_shape() {
        let secret = new_secret();
        let s = secret.expose();
        let h = secret.hint();
        assert_eq!(h.len(), 4 + 4 + 3 + 4);
        assert_eq!(h, format!("{}...{}", &s[..8], &s[49..]));
        assert_eq!(hint(s), Some(h));
        assert_eq!(hint(VECTORS[1]).as_deref(), Some("oas_0123...pCFO"));
    }

    #[test]
    fn hint_refuses_malformed_input() {
        assert_eq!(hint(""), None);
        assert_eq!(hint("oas_short"), None);
        assert_eq!(hint("hunter2hunter2hunter2"), None);
        assert_eq!(hint(&with_byte(VECTORS[0], 10, b'B')), None);
    }

    #[test]
    fn debug_is_redacted() {
        let secret = new_secret();
        let dbg = format!("{secret:?}");
        assert_eq!(dbg, "ClientSecret(<redacted>)");
        assert!(!dbg.contains(secret.expose()));
        let dbg = format!("{:?}", Some(&secret));
        assert!(!dbg.contains(&secret.expose()[4..20]));
    }

    #[test]
    fn try_from_string_checks_format() {
        let secret = ClientSecret::try_from(VECTORS[2].to_owned()).unwrap();
        assert_eq!(secret.expose(), VECTORS[2]);
        assert_eq!(secret.hint(), "oas_3333...zaU6");
        assert_eq!(
            ClientSecret::try_from(with_byte(VECTORS[2], 5, b'4')).unwrap_err(),
            SecretFormatError::ChecksumMismatch
        );
    }

    #[test]
    fn default_params_are_owasp_minimum() {
        assert_eq!(
            HashParams::default(),
            HashParams {
                m_cost_kib: 19_456,
                t_cost: 2,
                p_cost: 1
            }
        );
    }

    #[test]
    fn hash_then_verify() {
        let secret = new_secret();
        let phc = hash(secret.expose(), &FAST).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(!phc.contains(secret.expose()));
        assert!(verify(secret.expose(), &phc).unwrap());
        assert!(!verify(new_secret().expose(), &phc).unwrap());
        assert!(!verify("", &phc).unwrap());
        // One character off.
        let typo = with_byte(secret.expose(), 30, b'!');
        assert!(!verify(&typo, &phc).unwrap());
    }

    #[test]
    fn hash_with_default_params() {
        let secret = new_secret();
        let phc = hash(secret.expose(), &HashParams::default()).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify(secret.expose(), &phc).unwrap());
    }

    #[test]
    fn reused_memory_hashes_agree_with_the_argon2_crate() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let mut memory = HashMemory::default();
        // One buffer across parameter sets, as the hasher's workers use it.
        for params in [FAST, HashParams::default(), FAST] {
            let ours = hash_in("s3cret", &params, &mut memory).unwrap();
            let parsed = PasswordHash::new(&ours).unwrap();
            assert!(
                Argon2::default().verify_password(b"s3cret", &parsed).is_ok(),
                "{ours}"
            );
            assert!(Argon2::default().verify_password(b"other", &parsed).is_err());

            let argon2_params = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, None).unwrap();
            let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon2_params)
                .hash_password(b"s3cret")
                .unwrap()
                .to_string();
            assert!(verify_in("s3cret", &theirs, &mut memory).unwrap());
            assert!(!verify_in("other", &theirs, &mut memory).unwrap());
        }
    }

    #[test]
    fn hashes_are_salted() {
        let a = hash("same", &FAST).unwrap();
        let b = hash("same", &FAST).unwrap();
        assert_ne!(a, b);
        assert!(verify("same", &a).unwrap());
        assert!(verify("same", &b).unwrap());
    }

    #[test]
    fn verify_uses_params_from_the_phc_string() {
        let params = HashParams {
            m_cost_kib: 128,
            t_cost: 2,
            p_cost: 2,
        };
        let phc = hash("s3cret", &params).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=128,t=2,p=2$"), "{phc}");
        assert!(verify("s3cret", &phc).unwrap());
        // Changing a recorded parameter changes the result, so it is really being read.
        let tampered = phc.replacen("t=2", "t=1", 1);
        assert!(!verify("s3cret", &tampered).unwrap());
    }

    #[test]
    fn verify_rejects_malformed_phc() {
        for bad in ["", "not a phc string", "$", "$argon2id$v=19$m=64,t=1,p=1$!!!$!!!"] {
            assert!(
                matches!(verify("x", bad), Err(HashError::MalformedPhc(_))),
                "{bad:?}: {:?}",
                verify("x", bad)
            );
        }
        let phc = hash("x", &FAST).unwrap();
        // Without the output there is nothing to compare against.
        let no_hash = phc.rsplit_once('$').unwrap().0;
        assert!(matches!(verify("x", no_hash), Err(HashError::IncompletePhc)));
        let other_alg = phc.replacen("argon2id", "argon2i", 1);
        assert!(matches!(
            verify("x", &other_alg),
            Err(HashError::UnsupportedAlgorithm)
        ));
        let bad_param = phc.replacen("t=1", "t=0", 1);
        assert!(
            matches!(verify("x", &bad_param), Err(HashError::InvalidPhcParams(_))),
            "{:?}",
            verify("x", &bad_param)
        );
    }

    #[test]
    fn the_operator_verifies_only_hashes_with_its_own_parameters() {
        let secret = ClientSecret::generate().unwrap();
        let ours = hash(secret.expose(), &FAST).unwrap();
        assert!(uses_params(&ours, &FAST));
        let mut memory = HashMemory::default();
        assert!(verify_with(secret.expose(), &ours, &[FAST], &mut memory).unwrap());
        for other in [
            HashParams {
                m_cost_kib: FAST.m_cost_kib * 2,
                ..FAST
            },
            HashParams {
                t_cost: FAST.t_cost + 1,
                ..FAST
            },
            HashParams { p_cost: 2, ..FAST },
        ] {
            let theirs = hash(secret.expose(), &other).unwrap();
            assert!(!uses_params(&theirs, &FAST));
            assert!(matches!(
                verify_with(secret.expose(), &theirs, &[FAST], &mut memory),
                Err(HashError::ForeignParams)
            ));
        }
        // A 2 GiB hash string is refused without allocating: the buffer stays as it was.
        let huge = format!(
            "$argon2id$v=19$m={MAX_M_COST_KIB},t=32,p=64$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
        );
        let before = memory.0.len();
        assert!(matches!(
            verify_with(secret.expose(), &huge, &[FAST], &mut memory),
            Err(HashError::ForeignParams)
        ));
        assert_eq!(memory.0.len(), before);
        // Another algorithm or version with the same numbers, and garbage.
        assert!(!uses_params(&ours.replace("argon2id", "argon2i"), &FAST));
        assert!(!uses_params(&ours.replace("v=19", "v=16"), &FAST));
        assert!(!uses_params("not a hash", &FAST));
    }

    #[test]
    fn verify_refuses_excessive_params() {
        let phc = hash("x", &FAST).unwrap();
        let huge = phc.replacen("m=64", "m=4294967295", 1);
        assert!(matches!(
            verify("x", &huge),
            Err(HashError::ParamsTooExpensive {
                m_cost_kib: 4_294_967_295,
                ..
            })
        ));
        let slow = phc.replacen("t=1", "t=1000000", 1);
        assert!(matches!(
            verify("x", &slow),
            Err(HashError::ParamsTooExpensive { .. })
        ));
    }

    #[test]
    fn hash_rejects_bad_params() {
        for params in [
            HashParams {
                m_cost_kib: 1,
                ..FAST
            },
            HashParams { t_cost: 0, ..FAST },
            HashParams { p_cost: 0, ..FAST },
        ] {
            assert!(
                matches!(hash("x", &params), Err(HashError::InvalidParams(_))),
                "{params:?}"
            );
        }
        let err = hash(
            "x",
            &HashParams {
                m_cost_kib: MAX_M_COST_KIB + 1,
                ..FAST
            },
        )
        .unwrap_err();
        assert!(matches!(err, HashError::ParamsTooExpensive { .. }));
        assert!(err.to_string().contains("exceed"), "{err}");
    }

    #[test]
    fn hash_errors_do_not_contain_the_secret() {
        let secret = new_secret();
        let err = hash(secret.expose(), &HashParams { t_cost: 0, ..FAST }).unwrap_err();
        assert!(!err.to_string().contains(secret.expose()));
        let err = verify(secret.expose(), "garbage").unwrap_err();
        assert!(!err.to_string().contains(secret.expose()));
    }

    proptest! {
        #[test]
        fn prop_generated_secrets_pass_check_format(seed in any::<u64>()) {
            let s = generate_with(&mut StdRng::seed_from_u64(seed)).unwrap();
            prop_assert_eq!(s.len(), SECRET_LEN);
            prop_assert_eq!(check_format(&s), Ok(()));
            prop_assert!(hint(&s).is_some());
        }

        #[test]
        fn prop_os_generated_secrets_pass_check_format(_round in 0..16u8) {
            let secret = ClientSecret::generate().unwrap();
            prop_assert_eq!(check_format(secret.expose()), Ok(()));
        }

        #[test]
        fn prop_single_substitution_is_detected(
            seed in any::<u64>(),
            pos in SECRET_PREFIX.len()..SECRET_LEN,
            digit in 0..62usize,
        ) {
            let s = generate_with(&mut StdRng::seed_from_u64(seed)).unwrap();
            let replacement = BASE62[digit];
            prop_assume!(s.as_bytes()[pos] != replacement);
            let changed = with_byte(&s, pos, replacement);
            prop_assert_eq!(check_format(&changed), Err(SecretFormatError::ChecksumMismatch));
            prop_assert!(hint(&changed).is_none());
        }

        #[test]
        fn prop_adjacent_transposition_is_detected(
            seed in any::<u64>(),
            pos in SECRET_PREFIX.len()..SECRET_LEN - 1,
        ) {
            // A swap changes at most 16 consecutive bits, and CRC32 detects every burst
            // error up to 32 bits long.
            let s = generate_with(&mut StdRng::seed_from_u64(seed)).unwrap();
            let bytes = s.as_bytes();
            prop_assume!(bytes[pos] != bytes[pos + 1]);
            let mut swapped = bytes.to_vec();
            swapped.swap(pos, pos + 1);
            let swapped = String::from_utf8(swapped).unwrap();
            prop_assert_eq!(check_format(&swapped), Err(SecretFormatError::ChecksumMismatch));
        }

        #[test]
        fn prop_check_format_never_echoes_input(input in "oas_[-!0-9A-Za-z]{40,60}") {
            if let Err(err) = check_format(&input) {
                let msg = err.to_string();
                prop_assert!(!msg.contains(&input[4..12]), "{}", msg);
            }
        }

        #[test]
        fn prop_check_format_total(input in any::<String>()) {
            // Never panics, and accepts only strings of the documented shape.
            if check_format(&input).is_ok() {
                prop_assert_eq!(input.len(), SECRET_LEN);
                prop_assert!(input.starts_with(SECRET_PREFIX));
            }
        }
    }

    #[test]
    fn hash_parameters_parse_from_the_phc_notation() {
        assert_eq!(
            parse_params("m=19456,t=2,p=1"),
            Ok(HashParams {
                m_cost_kib: 19_456,
                t_cost: 2,
                p_cost: 1
            })
        );
        assert_eq!(
            parse_params(" t=3, p=1,m=65536").map(|p| p.m_cost_kib),
            Ok(65_536)
        );
        for bad in [
            "",
            "m=19456,t=2",
            "m=19456,t=2,p=1,x=4",
            "m=a,t=2,p=1",
            "m=1,m=2,t=2,p=1",
            "19456,2,1",
        ] {
            assert!(parse_params(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_hash_verifies_only_with_trusted_parameters() {
        let old = HashParams {
            m_cost_kib: 8,
            t_cost: 1,
            p_cost: 1,
        };
        let new = HashParams {
            m_cost_kib: 16,
            t_cost: 1,
            p_cost: 1,
        };
        let s = ClientSecret::generate().unwrap();
        let phc = hash(s.expose(), &old).unwrap();
        let mut memory = HashMemory::default();
        assert!(matches!(
            verify_with(s.expose(), &phc, &[new], &mut memory),
            Err(HashError::ForeignParams)
        ));
        assert!(verify_with(s.expose(), &phc, &[new, old], &mut memory).unwrap());
        assert!(uses_trusted_params(&phc, &[new, old]));
        assert!(!uses_trusted_params(&phc, &[new]));
    }
}
