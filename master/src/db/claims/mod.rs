//! The claim protocol: how a build request goes from the queue to one
//! master, and back. In the order things happen:
//!
//! 1. **Pick** (`candidates`): a master with idle workers looks, without
//!    locking, at the best claimable requests of the builders they serve and
//!    works out how many of each its workers can take.
//! 2. **Claim** ([`Store::pick_and_claim_per_builder`],
//!    [`Store::claim_within_limit`]): in one write transaction, lock the
//!    best claimable requests of each builder (`FOR UPDATE SKIP LOCKED` on
//!    MySQL, so masters split the queue instead of queueing on its oldest
//!    row; `BEGIN IMMEDIATE` on SQLite), then compare-and-swap exactly those
//!    rows to this master, only while it is an active incarnation, and
//!    raise the builders' written claim counts. A round ends in a
//!    [`ClaimRound`]. Builders with `max_concurrent_builds` claim within the
//!    room their count leaves (`limited`).
//! 3. **Start** (`build`, [`Store::start_build`]): a build is recorded only
//!    while this active master still holds the claim.
//! 4. **Renew** (`renew`): every `claim_renew_interval` the holder
//!    refreshes `claimed_at`; a claim found gone means stop that build.
//! 5. **Complete / finish** (`complete`, [`Store::finish_build`]): the
//!    fenced compare-and-swap completes the request, counts it down on its
//!    buildset (completing the buildset at zero) and off its builder's
//!    claimed count, in one transaction.
//! 6. **Give back** (`give_back`): requests a master cannot run, or that
//!    nothing here runs any more, go back to the queue.
//! 7. **Release others' claims** (`release`, `reap`): a claim whose lease
//!    ran out or whose master is dead is released by whoever gets there
//!    first, one compare-and-swap per row naming the old owner and old
//!    `claimed_at`; masters are declared dead by compare-and-swap on the
//!    heartbeat the observer watched stand still.
//!
//! Every condition and order these steps share is named once in `sql`.
//! The two hot transactions (the claim and the completion) have two
//! implementations with the same arguments and outcome: `stepwise` (one
//! statement per round trip, every backend) and `script` (the same
//! statements as one MySQL multi-statement round trip). The `Store` runs
//! the script where the server takes it and the stepwise path otherwise.

use super::{BuilderId, DbError, MasterId, RequestId, Results, Store};

mod build;
mod candidates;
mod complete;
pub(crate) mod counts;
mod give_back;
mod limited;
mod procedures;
mod reap;
mod release;
mod renew;
mod script;
pub(crate) mod sql;
mod stepwise;
pub mod testing;

/// One request won by a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Claim {
    pub request: RequestId,
    pub builder: BuilderId,
}

/// How a claim round ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimRound {
    /// These requests are now this master's (at least one).
    Won(Vec<Claim>),
    /// Nothing was claimable (or a limited builder had no room).
    NothingToDo,
    /// This incarnation is no longer active: it was declared dead and
    /// finds out at its next heartbeat. Nothing was claimed.
    RefusedInactive,
    /// The rows locked for the claim were not all there to take when the
    /// compare-and-swap ran, or a limited builder's count moved meanwhile:
    /// nothing was claimed (a later round tries again).
    LostRaces,
}

impl Claim {
    /// (request id, builder id) pairs as claims.
    pub(crate) fn all(pairs: impl IntoIterator<Item = (i64, i64)>) -> Vec<Claim> {
        pairs
            .into_iter()
            .map(|(r, b)| Claim {
                request: RequestId(r),
                builder: BuilderId(b),
            })
            .collect()
    }
}

impl ClaimRound {
    /// The outcome of a compare-and-swap that had `locked` rows to take and
    /// changed `claimed` of them.
    pub(crate) fn of_cas(claims: Vec<Claim>, claimed: u64) -> ClaimRound {
        if claims.is_empty() {
            ClaimRound::NothingToDo
        } else if claimed == claims.len() as u64 {
            ClaimRound::Won(claims)
        } else if claimed == 0 {
            ClaimRound::RefusedInactive
        } else {
            ClaimRound::LostRaces
        }
    }

    /// The requests won (none unless `Won`).
    pub fn won(&self) -> &[Claim] {
        match self {
            ClaimRound::Won(c) => c,
            _ => &[],
        }
    }

    /// The request ids won.
    pub fn request_ids(&self) -> Vec<i64> {
        self.won().iter().map(|c| c.request.0).collect()
    }

    /// Two rounds run one after the other as one: what either won; failing
    /// that, the graver of the two (refused, lost races, nothing to do).
    pub fn and(self, next: ClaimRound) -> ClaimRound {
        use ClaimRound::*;
        match (self, next) {
            (Won(mut a), Won(b)) => {
                a.extend(b);
                Won(a)
            }
            (Won(a), _) | (_, Won(a)) => Won(a),
            (RefusedInactive, _) | (_, RefusedInactive) => RefusedInactive,
            (LostRaces, _) | (_, LostRaces) => LostRaces,
            (NothingToDo, NothingToDo) => NothingToDo,
        }
    }
}

/// One entry per builder (a builder named twice wants the sum), none with
/// nothing wanted.
fn merge_wants(wants: &[(BuilderId, usize)]) -> Vec<(i64, i64)> {
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (b, n) in wants.iter().filter(|(_, n)| *n > 0) {
        let n = i64::try_from(*n).unwrap_or(i64::MAX);
        match merged.iter_mut().find(|(mb, _)| *mb == b.0) {
            Some((_, m)) => *m = m.saturating_add(n),
            None => merged.push((b.0, n)),
        }
    }
    merged
}

/// Unique ids in first-seen order.
pub(crate) fn dedup(ids: &[i64]) -> Vec<i64> {
    let mut seen = std::collections::BTreeSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

impl Store {
    /// Step 2, the claim loop's round: for each (builder, n), claim up to n
    /// of its best claimable requests for `me`, all in one transaction.
    /// Won claims come in the order the builders were asked for, oldest
    /// request first.
    pub async fn pick_and_claim_per_builder(
        &self,
        me: MasterId,
        wants: &[(BuilderId, usize)],
    ) -> Result<ClaimRound, DbError> {
        let wants = &merge_wants(wants);
        if wants.is_empty() {
            return Ok(ClaimRound::NothingToDo);
        }
        if let [(builder, 1)] = wants[..] {
            let call = self.try_procedure(|pool| async move {
                procedures::claim_one(&pool, me, builder).await
            });
            if let Some(round) = call.await {
                return round;
            }
        }
        let script = self.try_script(|pool| async move {
            script::pick_and_claim_per_builder(&pool, me, wants).await
        });
        if let Some(round) = script.await {
            return round;
        }
        stepwise::pick_and_claim_per_builder(self, me, wants).await
    }

    /// Step 5: complete requests `me` holds (fenced) with `results`;
    /// returns those completed now. Counts them down on their buildsets,
    /// completing each buildset whose count reaches zero, and off their
    /// builders' claimed counts.
    pub async fn complete_requests(
        &self,
        me: MasterId,
        ids: &[i64],
        results: Results,
    ) -> Result<Vec<i64>, DbError> {
        let ids = &dedup(ids);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if let [id] = ids[..] {
            let call = self.try_procedure(|pool| async move {
                procedures::complete_one(&pool, me, id, results).await
            });
            if let Some(done) = call.await {
                return done.map(|done| if done { vec![id] } else { Vec::new() });
            }
        }
        let script = self.try_script(|pool| async move {
            script::complete_requests(&pool, me, ids, results).await
        });
        if let Some(done) = script.await {
            return done;
        }
        stepwise::complete_requests(self, me, ids, results).await
    }
}
