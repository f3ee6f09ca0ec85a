//! Rendezvous (highest-random-weight) ranking of live members per shard.
//!
//! Every instance computes the same ranking from the same member list, with
//! no coordinator and no stored map: member `m` weighs `h(shard, m)` for each
//! shard, and the heaviest leads. When a member leaves, only the shards it
//! ranked first for change their preferred leader; when one joins, it takes
//! first rank only for the shards where it outweighs everyone. That minimal
//! movement is why HRW beats `hash mod M`, and rank 2 names a natural warm
//! standby with no extra state.
//!
//! The ranking is a preference: the lease decides who actually leads (see
//! the `lease` module), so two members with briefly different views of the
//! membership cannot both publish.
//!
//! The weight is XXH3-64 of the member id seeded with the shard number:
//! stable across builds and platforms (a published specification), and
//! well mixed even for neighbouring seeds.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::member_id::MemberId;
use crate::shard_map::ShardId;

/// The weight of `member` for `shard`; higher ranks first.
pub fn weight(shard: ShardId, member: &MemberId) -> u64 {
    xxh3_64_with_seed(member.as_str().as_bytes(), u64::from(shard.0))
}

/// `members` ordered by preference for `shard`: element 0 is rank 1 (should
/// lead), element 1 rank 2 (warm standby). Duplicates are dropped; ties (a
/// 2^-64 event) are broken by id so every instance agrees.
pub fn rank(shard: ShardId, members: &[MemberId]) -> Vec<MemberId> {
    let mut weighted: Vec<(u64, &MemberId)> =
        members.iter().map(|m| (weight(shard, m), m)).collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    weighted.dedup_by(|a, b| a.1 == b.1);
    weighted.into_iter().map(|(_, m)| m.clone()).collect()
}

/// The 1-based rank of `member` for `shard` among `members`, `None` when it
/// is not one of them.
pub fn rank_of(shard: ShardId, member: &MemberId, members: &[MemberId]) -> Option<usize> {
    rank(shard, members)
        .iter()
        .position(|m| m == member)
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn members(names: &[&str]) -> Vec<MemberId> {
        names
            .iter()
            .map(|n| MemberId::from_stored(n).unwrap())
            .collect()
    }

    fn leaders(shards: u16, members: &[MemberId]) -> Vec<MemberId> {
        (0..shards)
            .map(|s| rank(ShardId(s), members)[0].clone())
            .collect()
    }

    #[test]
    fn ranking_is_deterministic_and_order_independent() {
        let a = members(&["a-1", "b-2", "c-3", "d-4"]);
        let mut b = a.clone();
        b.reverse();
        for shard in 0..64 {
            let first = rank(ShardId(shard), &a);
            assert_eq!(first, rank(ShardId(shard), &a));
            assert_eq!(first, rank(ShardId(shard), &b));
            assert_eq!(first.len(), 4);
        }
    }

    #[test]
    fn shards_balance_over_members() {
        // (members, shards, minimum and maximum leaders per member)
        // Bounds are about 3.5 standard deviations of a fair (binomial) split.
        let cases = [
            (3usize, 64u16, 8usize, 35usize),
            (5, 64, 3, 24),
            (2, 64, 18, 46),
        ];
        for (count, shards, low, high) in cases {
            let names: Vec<String> = (0..count)
                .map(|i| format!("pod-{i}-{}", i * 7919))
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let ms = members(&refs);
            let mut per_member: BTreeMap<MemberId, usize> = BTreeMap::new();
            for leader in leaders(shards, &ms) {
                *per_member.entry(leader).or_default() += 1;
            }
            assert_eq!(per_member.len(), count, "every member leads something");
            for (member, led) in per_member {
                assert!(
                    (low..=high).contains(&led),
                    "{count} members: {member} leads {led}"
                );
            }
        }
    }

    #[test]
    fn load_spread_matches_a_fair_random_assignment() {
        // Over many member sets, the variance of the number of shards each
        // member leads must match a fair split's, 64 * p * (1 - p) with
        // p = 1/5: a biased or correlated weight shows up as a larger one.
        let (sets, size, shards) = (400u128, 5usize, 64u16);
        let mut squares = 0.0;
        for set in 0..sets {
            let ms: Vec<MemberId> = (0..size as u128)
                .map(|i| {
                    let uuid =
                        uuid::Uuid::from_u128((set * 31 + i).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    MemberId::from_stored(&format!("pod-{i}-{}", uuid.simple())).unwrap()
                })
                .collect();
            let mut counts = vec![0usize; size];
            for leader in leaders(shards, &ms) {
                counts[ms.iter().position(|m| *m == leader).unwrap()] += 1;
            }
            let mean = f64::from(shards) / size as f64;
            squares += counts
                .iter()
                .map(|&c| (c as f64 - mean).powi(2))
                .sum::<f64>();
        }
        let variance = squares / (sets as f64 * size as f64);
        let fair = f64::from(shards) * 0.2 * 0.8;
        assert!(
            (fair * 0.8..=fair * 1.2).contains(&variance),
            "variance {variance}, fair {fair}"
        );
    }

    #[test]
    fn a_departure_moves_only_the_departed_members_shards() {
        let all = members(&["a-1", "b-2", "c-3", "d-4"]);
        let before = leaders(64, &all);
        for gone in 0..all.len() {
            let rest: Vec<MemberId> = all.iter().filter(|m| **m != all[gone]).cloned().collect();
            let after = leaders(64, &rest);
            for shard in 0..64 {
                if before[shard] != all[gone] {
                    assert_eq!(
                        before[shard], after[shard],
                        "shard {shard} moved needlessly"
                    );
                } else {
                    // The old rank 2 (the warm standby) takes over.
                    assert_eq!(after[shard], rank(ShardId(shard as u16), &all)[1]);
                }
            }
        }
    }

    #[test]
    fn a_join_moves_shards_only_to_the_newcomer() {
        let old = members(&["a-1", "b-2", "c-3"]);
        let mut grown = old.clone();
        grown.push(MemberId::from_stored("d-4").unwrap());
        let before = leaders(64, &old);
        let after = leaders(64, &grown);
        let mut moved = 0;
        for shard in 0..64 {
            if before[shard] != after[shard] {
                assert_eq!(after[shard].as_str(), "d-4");
                moved += 1;
            }
        }
        assert!(
            (8..=28).contains(&moved),
            "{moved} shards moved to the newcomer"
        );
    }

    #[test]
    fn rank_of_is_one_based_and_absent_members_have_none() {
        let ms = members(&["a-1", "b-2"]);
        let order = rank(ShardId(9), &ms);
        assert_eq!(rank_of(ShardId(9), &order[0], &ms), Some(1));
        assert_eq!(rank_of(ShardId(9), &order[1], &ms), Some(2));
        let stranger = MemberId::from_stored("z-9").unwrap();
        assert_eq!(rank_of(ShardId(9), &stranger, &ms), None);
        assert!(rank(ShardId(0), &[]).is_empty());
        let doubled = members(&["a-1", "a-1"]);
        assert_eq!(rank(ShardId(3), &doubled).len(), 1);
    }
}
