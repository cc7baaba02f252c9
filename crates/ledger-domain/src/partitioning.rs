//! Which partition an account lives in: Kafka's murmur2 partitioner, as the Java client
//! (and librdkafka's `murmur2_random`, which the ingest uses) computes it for a keyed
//! record.
//!
//! The projector keeps state per partition, so it must agree with the producer on this
//! to the bit: it finds an account's partition to answer a query, and it refuses an event
//! that sits in any other partition than its account's (`wrong_partition`).

use crate::ids::AccountId;

/// Java's `Utils.murmur2` of `key`.
pub fn murmur2(key: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (key.len() as u32);
    let chunks = key.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a Java producer picks for a record with this key:
/// `toPositive(murmur2(key)) % partitions`.
///
/// # Panics
/// If `partitions` is not positive: a topic always has at least one partition.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) % partitions as u32) as i32
}

/// The partition of an account's events: its id is the record key.
pub fn partition_of(account: &AccountId, partitions: i32) -> i32 {
    partition_for_key(account.as_str().as_bytes(), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's own `UtilsTest.testMurmur2` and from the Java client's
    /// `DefaultPartitioner` for short keys.
    #[test]
    fn agrees_with_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn every_key_lands_inside_the_topic() {
        for n in 1..50 {
            for key in ["", "a", "acc-1", "demo-bob", "x.y_z-0123456789"] {
                let p = partition_for_key(key.as_bytes(), n);
                assert!((0..n).contains(&p), "{key} over {n} partitions gave {p}");
            }
        }
    }
}
