//! The claim loop's usual rounds on MySQL/MariaDB — claim one request,
//! complete one request — as stored procedures.
//!
//! A one-trip script (`script`) saves the round trips but the server still
//! parses every statement of it on every call; a procedure is parsed once
//! per connection and then only executed. The bodies are composed from the
//! same pieces as both other paths (`sql`, `buildset_finish`), so the
//! statements and their conditions are the same; only integers reach the
//! server, as arguments.
//!
//! Each procedure's name ends in a hash of its text: masters of two
//! versions during a rolling deploy call each its own, and a change of the
//! body is a new procedure, never a replaced one. A procedure is created
//! the first time a call finds it missing (`CREATE PROCEDURE IF NOT EXISTS`,
//! so masters racing to create it all succeed); a server or user that may
//! not create routines makes the store fall back to the scripts.

use std::sync::LazyLock;

use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::{AssertSqlSafe, Row};

use super::{ClaimRound, sql};
use crate::db::buildset_finish::count_down_sql;
use crate::db::dialect::Dialect;
use crate::db::{DbError, MasterId, Results};

/// A stored procedure: its versioned name and the statement creating it.
pub(crate) struct Procedure {
    pub(crate) name: String,
    create: String,
}

impl Procedure {
    /// `stem` with a hash of the parameter list and body appended.
    fn new(stem: &str, params: &str, body: &str) -> Procedure {
        let name = format!("{stem}_{:016x}", fnv1a(&format!("{params}\n{body}")));
        let create = format!(
            "CREATE PROCEDURE IF NOT EXISTS {name}({params}) MODIFIES SQL DATA BEGIN {body} END"
        );
        Procedure { name, create }
    }
}

/// FNV-1a, 64 bits: a hash that is the same in every build and release.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Claim the best claimable request of `p_builder` for `p_me` if `p_me` is
/// active: the script's `claim_one`, with local variables (a pick that
/// finds no row leaves `v_id` NULL: "no data" is only a warning). Answers
/// one row, `id` (the request locked, NULL when none) and `claimed` (0 or
/// 1).
pub(crate) static CLAIM_ONE: LazyLock<Procedure> = LazyLock::new(|| {
    let body = format!(
        "DECLARE v_id BIGINT DEFAULT NULL; \
         DECLARE v_n BIGINT DEFAULT 0; \
         START TRANSACTION; \
         {pick}{lock}; \
         IF v_id IS NOT NULL THEN \
           {claim}; \
           SET v_n = ROW_COUNT(); \
           IF v_n > 0 THEN \
             UPDATE builders SET claimed_requests = claimed_requests + v_n WHERE id = p_builder; \
           END IF; \
         END IF; \
         COMMIT; \
         SELECT v_id AS id, v_n AS claimed;",
        pick = sql::best_of_builder("id INTO v_id", "p_builder", "1"),
        lock = Dialect::MySql.skip_locked(),
        claim = sql::claim("buildrequests", "id = v_id", "p_me", "NOW(6)"),
    );
    Procedure::new(
        "flotilla_claim_one",
        "IN p_me BIGINT, IN p_builder BIGINT",
        &body,
    )
});

/// Complete request `p_id` with results `p_code` (of rank `p_rank`) if
/// `p_me` holds it, counting it down on its buildset and its builder: the
/// script's completion of one request. Answers one row, `c0` (1 when
/// completed here, else 0).
pub(crate) static COMPLETE_ONE: LazyLock<Procedure> = LazyLock::new(|| {
    let body = format!(
        "DECLARE v_c BIGINT DEFAULT 0; \
         DECLARE v_bs BIGINT DEFAULT NULL; \
         DECLARE v_b BIGINT DEFAULT NULL; \
         START TRANSACTION; \
         {complete}; \
         SET v_c = ROW_COUNT(); \
         IF v_c = 1 THEN \
           SELECT buildsetid, builderid INTO v_bs, v_b FROM buildrequests WHERE id = p_id; \
           {count_down}; \
           UPDATE builders SET claimed_requests = claimed_requests - 1 WHERE id = v_b; \
         END IF; \
         COMMIT; \
         SELECT v_c AS c0;",
        complete = sql::complete(
            &format!("id = p_id AND {}", sql::held_by("p_me")),
            "p_code",
            "NOW(6)"
        ),
        count_down = count_down_sql(1, "p_rank", "NOW(6)", "id = v_bs"),
    );
    Procedure::new(
        "flotilla_complete_one",
        "IN p_me BIGINT, IN p_id BIGINT, IN p_code INT, IN p_rank INT",
        &body,
    )
});

/// `CALL` procedure `p` with `args` (integers, comma-separated), creating it
/// first if the server does not have it; its answer row. On an error the
/// connection is rolled back before it goes back to the pool.
async fn call(pool: &MySqlPool, p: &Procedure, args: &str) -> Result<Option<MySqlRow>, DbError> {
    let text = format!("CALL {}({args})", p.name);
    match super::script::run(pool, text.clone()).await {
        Err(e) if e.is_access_denied() => Err(DbError::NoProcedures(format!("{}: {e}", p.name))),
        Err(e) if e.is_missing_routine() => {
            let mut conn = pool.acquire().await?;
            sqlx::raw_sql(AssertSqlSafe(p.create.clone()))
                .execute(&mut *conn)
                .await
                .map_err(|e| match DbError::from(e) {
                    e if e.is_transient() => e,
                    e => DbError::NoProcedures(format!("creating {}: {e}", p.name)),
                })?;
            drop(conn);
            super::script::run(pool, text).await
        }
        r => r,
    }
}

/// The claim of one request of `builder` for `me` (`CLAIM_ONE`).
pub(super) async fn claim_one(
    pool: &MySqlPool,
    me: MasterId,
    builder: i64,
) -> Result<ClaimRound, DbError> {
    let row = call(pool, &CLAIM_ONE, &format!("{me}, {builder}"))
        .await?
        .ok_or_else(|| DbError::Other("claim procedure returned no outcome".into()))?;
    super::script::one_claim(&row, builder)
}

/// The completion of request `id` by `me` with `results` (`COMPLETE_ONE`):
/// whether it was completed now.
pub(super) async fn complete_one(
    pool: &MySqlPool,
    me: MasterId,
    id: i64,
    results: Results,
) -> Result<bool, DbError> {
    let args = format!("{me}, {id}, {}, {}", results.as_i64(), results.rank());
    let row = call(pool, &COMPLETE_ONE, &args)
        .await?
        .ok_or_else(|| DbError::Other("completion procedure returned no outcome".into()))?;
    Ok(row.try_get::<i64, _>("c0")? == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_text() {
        let a = Procedure::new("p", "IN x INT", "SELECT x;");
        let b = Procedure::new("p", "IN x INT", "SELECT x + 0;");
        assert_ne!(a.name, b.name);
        assert_eq!(a.name, Procedure::new("p", "IN x INT", "SELECT x;").name);
        assert!(
            a.create
                .starts_with(&format!("CREATE PROCEDURE IF NOT EXISTS {}(", a.name))
        );
    }

    #[test]
    fn the_bodies_carry_the_protocol_conditions() {
        assert!(CLAIM_ONE.create.contains(sql::CLAIMABLE));
        assert!(CLAIM_ONE.create.contains(&sql::active_master("p_me")));
        assert!(COMPLETE_ONE.create.contains(&sql::held_by("p_me")));
    }
}
