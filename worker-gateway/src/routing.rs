//! Rendezvous (highest-random-weight) hashing: which master a worker goes to.
//!
//! Each (worker, master) pair gets a pseudo-random score and a worker goes to
//! the master with the highest score. While the set of masters is unchanged a
//! worker always lands on the same master; when a master joins, only the
//! workers it now wins move to it, and when one leaves, only its workers move.
//! The hash is a fixed function (FNV-1a plus a 64-bit finaliser), so every
//! gateway and every build agrees on it.

/// Score of `worker` on the master identified by `master_name` and `master_id`.
pub fn score(worker: &str, master_name: &str, master_id: i64) -> u64 {
    let mut h = Fnv::new();
    h.write(&(worker.len() as u64).to_le_bytes());
    h.write(worker.as_bytes());
    h.write(&(master_name.len() as u64).to_le_bytes());
    h.write(master_name.as_bytes());
    h.write(&master_id.to_le_bytes());
    fmix64(h.0)
}

/// Picks the candidate with the highest score for `worker`; ties (practically
/// impossible) go to the larger (name, id) so the choice is still deterministic.
pub fn pick<'a, T>(
    worker: &str,
    candidates: impl IntoIterator<Item = (&'a str, i64, T)>,
) -> Option<T> {
    candidates
        .into_iter()
        .map(|(name, id, item)| ((score(worker, name, id), name, id), item))
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, item)| item)
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// MurmurHash3's 64-bit finaliser: spreads FNV's weak high bits.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(worker: &str, masters: &[(&'static str, i64)]) -> (&'static str, i64) {
        pick(worker, masters.iter().map(|&(n, i)| (n, i, (n, i)))).unwrap()
    }

    #[test]
    fn empty_has_no_choice() {
        assert_eq!(pick::<()>("w", []), None);
    }

    #[test]
    fn stable_and_order_independent() {
        let a = [("m1", 1), ("m2", 2), ("m3", 3)];
        let b = [("m3", 3), ("m1", 1), ("m2", 2)];
        for i in 0..200 {
            let w = format!("worker-{i}");
            assert_eq!(route(&w, &a), route(&w, &b));
            assert_eq!(route(&w, &a), route(&w, &a));
        }
    }

    #[test]
    fn spreads_workers_evenly() {
        let masters = [("m1", 10), ("m2", 20), ("m3", 30)];
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let chosen = route(&format!("w{i}"), &masters);
            counts[masters.iter().position(|m| *m == chosen).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn adding_a_master_moves_only_workers_to_it() {
        let before = [("m1", 1), ("m2", 2)];
        let after = [("m1", 1), ("m2", 2), ("m3", 3)];
        let mut moved = 0;
        for i in 0..1000 {
            let w = format!("w{i}");
            let (b, a) = (route(&w, &before), route(&w, &after));
            if a != b {
                assert_eq!(a, ("m3", 3), "a worker moved between surviving masters");
                moved += 1;
            }
        }
        assert!((250..420).contains(&moved), "moved {moved} of 1000");
    }

    #[test]
    fn removing_a_master_moves_only_its_workers() {
        let before = [("m1", 1), ("m2", 2), ("m3", 3)];
        let after = [("m1", 1), ("m3", 3)];
        for i in 0..1000 {
            let w = format!("w{i}");
            let b = route(&w, &before);
            if b != ("m2", 2) {
                assert_eq!(route(&w, &after), b);
            }
        }
    }

    #[test]
    fn new_incarnation_is_a_different_master() {
        // The same name with a new id reshuffles only by chance, not systematically.
        let differ = (0..200)
            .filter(|i| score(&format!("w{i}"), "m", 1) != score(&format!("w{i}"), "m", 2))
            .count();
        assert_eq!(differ, 200);
    }
}
