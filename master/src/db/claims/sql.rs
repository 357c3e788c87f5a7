//! The conditions, orders and statements of the claim protocol, each named
//! once. The stepwise path binds parameters (`?`), the one-trip script
//! writes integers into its text (ids, never user text): so every piece
//! takes the values it needs as SQL text, `"?"` or an id.
//!
//! Column names are unqualified: in the script's multi-table updates the
//! other table is a `JSON_TABLE` with an `id` column only, so
//! `claimed_by_masterid`, `complete` and `builderid` name the request's.

/// A request nobody holds and nobody has finished: what a claim may take.
pub(crate) const CLAIMABLE: &str = "claimed_by_masterid IS NULL AND complete = 0";

/// A request someone holds and has not finished (reaping looks at these).
pub(crate) const HELD: &str = "claimed_by_masterid IS NOT NULL AND complete = 0";

/// The order in which claims take a builder's requests: priority (high
/// first), then age, then id. The pick index covers it.
pub(crate) const PICK_ORDER: &str = "priority DESC, submitted_at, id";

/// A request `who` holds and has not finished: the fence on every write a
/// master makes about its own claims.
pub(crate) fn held_by(who: &str) -> String {
    format!("claimed_by_masterid = {who} AND complete = 0")
}

/// A request one of `list` (a comma-separated list) holds and has not
/// finished.
pub(crate) fn held_by_one_of(list: &str) -> String {
    format!("claimed_by_masterid IN ({list}) AND complete = 0")
}

/// `columns` of the requests among `n` bound ids (then `who`, bound) that
/// `who` holds, in id order; the caller adds the row-lock suffix.
pub(crate) fn those_held(columns: &str, n: usize) -> String {
    format!(
        "SELECT {columns} FROM buildrequests WHERE id IN ({}) AND {} ORDER BY id",
        crate::db::dialect::placeholders(n),
        held_by("?")
    )
}

/// `who` is an active incarnation. Every claim and every start of a build
/// carries it: a master already declared dead takes nothing, even before
/// its next heartbeat tells it so.
pub(crate) fn active_master(who: &str) -> String {
    format!("EXISTS (SELECT 1 FROM masters WHERE masters.id = {who} AND masters.active = 1)")
}

/// The best `limit` claimable requests of `builder` (one indexed range),
/// with `columns`. The caller adds the row-lock suffix it needs.
pub(crate) fn best_of_builder(columns: &str, builder: &str, limit: &str) -> String {
    format!(
        "SELECT {columns} FROM buildrequests \
         WHERE {CLAIMABLE} AND builderid = {builder} ORDER BY {PICK_ORDER} LIMIT {limit}"
    )
}

/// The claim itself, a compare-and-swap: give the claimable rows of
/// `target` (`buildrequests`, or a join that selects the rows) matching
/// `which` to `me`, if `me` is active. The rows it changed are the rows won.
pub(crate) fn claim(target: &str, which: &str, me: &str, now: &str) -> String {
    format!(
        "UPDATE {target} SET claimed_by_masterid = {me}, claimed_at = {now} \
         WHERE {which} AND {CLAIMABLE} AND {active}",
        active = active_master(me)
    )
}

/// Complete the requests matching `which` (a condition that includes the
/// fence) with `results` (a stored code). The buildset's count-down
/// (`buildset_finish::count_down_sql`) and the builder's claimed count
/// belong in the same transaction: together they are "complete a request
/// and its buildset".
pub(crate) fn complete(which: &str, results: &str, now: &str) -> String {
    format!(
        "UPDATE buildrequests SET complete = 1, results = {results}, complete_at = {now} \
         WHERE {which}"
    )
}

/// Give the requests matching `which` (a condition naming the holder and
/// what else the caller expects) back to the queue.
pub(crate) fn unclaim(which: &str) -> String {
    format!("UPDATE buildrequests SET claimed_by_masterid = NULL, claimed_at = NULL WHERE {which}")
}

/// End the unfinished builds matching `which` with `results` (a stored
/// code or an expression): a build ends once, so a replay changes nothing.
pub(crate) fn end_builds(which: &str, results: &str, now: &str) -> String {
    format!(
        "UPDATE builds SET complete_at = {now}, results = {results} \
         WHERE {which} AND complete_at IS NULL"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_repeats_claimable_and_the_active_master() {
        let sql = claim("buildrequests", "id = ?", "?", "NOW(6)");
        assert!(sql.contains(CLAIMABLE), "{sql}");
        assert!(sql.contains(&active_master("?")), "{sql}");
        assert!(sql.starts_with("UPDATE buildrequests SET claimed_by_masterid = ?"));
    }

    #[test]
    fn the_pick_takes_claimable_rows_in_pick_order() {
        let sql = best_of_builder("id", "7", "3");
        assert!(sql.contains(&format!("WHERE {CLAIMABLE} AND builderid = 7")));
        assert!(sql.ends_with(&format!("ORDER BY {PICK_ORDER} LIMIT 3")));
    }
}
