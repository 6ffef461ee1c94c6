//! The hashing workers' argon2 memory goes back to the system when it is freed
//! (`oauthapp_operator::model::secret::HashMemory`; the workers free theirs when idle): a test binary
//! of its own, so that no other test's allocations move this process's resident set. It uses
//! the operator's global allocator (src/main.rs), as the operator's workers do.

use oauthapp_operator::model::secret::{HashMemory, HashParams, hash_in};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// This process's resident set (VmRSS), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib / 1024.0
}

#[test]
fn freed_hashing_memory_goes_back_to_the_system() {
    let params = HashParams::default();
    let buffer_mib = f64::from(params.m_cost_kib) / 1024.0;
    let before = rss_mib();
    // Taken and freed again and again, as the workers do when they go idle between bursts. A
    // buffer of exactly its size would come from the heap after the first free (glibc raises its
    // mmap threshold to the size of a freed mapping) and stay resident once freed there.
    for _ in 0..4 {
        let mut memory = HashMemory::default();
        let rss_in_use = {
            hash_in("a secret", &params, &mut memory).expect("hash");
            rss_mib()
        };
        assert!(
            rss_in_use > before + buffer_mib / 2.0,
            "the buffer is resident while held ({rss_in_use:.1} MiB, {before:.1} MiB before)"
        );
        drop(memory);
    }
    let after = rss_mib();
    assert!(
        after < before + buffer_mib / 2.0,
        "{after:.1} MiB resident after freeing the {buffer_mib:.0} MiB buffers, {before:.1} MiB before"
    );
}
