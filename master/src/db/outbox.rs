//! The reporters' outbox, written where builds start and finish.
//!
//! A reporter must hear of every build start and end it wants, across any
//! master's death, so the event is a row of `report_deliveries` inserted in
//! the very transaction that records the build's start or end: both commit
//! or neither does. One row per (reporter, build, phase), unique, so a
//! replayed transaction (its first answer lost) inserts nothing new.
//!
//! Which reporters want which builders is worked out once, when the master
//! starts ([`Store::set_report_routes`]); with no reporters configured no
//! statement is added. The rows are integers and the reporter's name only:
//! what to send is worked out later by the delivery loop
//! (`report_deliveries`, `crate::reporters`), outside the hot transaction.

use std::sync::Arc;

use super::Store;
use super::dialect::Dialect;

/// The build event a row reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Started = 0,
    Finished = 1,
}

impl Phase {
    pub fn from_i64(v: i64) -> Phase {
        if v == 0 {
            Phase::Started
        } else {
            Phase::Finished
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Started => "started",
            Phase::Finished => "finished",
        }
    }
}

/// One reporter's interest in one builder's builds (`builder_id` `None`:
/// every builder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRoute {
    pub reporter: String,
    pub builder_id: Option<i64>,
    pub started: bool,
    pub finished: bool,
}

impl ReportRoute {
    fn wants(&self, phase: Phase) -> bool {
        match phase {
            Phase::Started => self.started,
            Phase::Finished => self.finished,
        }
    }
}

/// The routes a store enqueues by (shared by its clones).
pub(crate) type Routes = Arc<std::sync::RwLock<Arc<Vec<ReportRoute>>>>;

impl Store {
    /// From now on, starting and finishing a build also enqueues the
    /// deliveries these routes call for.
    pub fn set_report_routes(&self, routes: Vec<ReportRoute>) {
        *self.outbox.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routes);
    }

    pub(crate) fn report_routes(&self) -> Arc<Vec<ReportRoute>> {
        self.outbox
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The (reporter, builder id or 0) pairs wanting `phase`, in a derived
/// table whose rows are joined to the build.
fn wanting(routes: &[ReportRoute], phase: Phase) -> Vec<(&str, i64)> {
    routes
        .iter()
        .filter(|r| r.wants(phase))
        .map(|r| (r.reporter.as_str(), r.builder_id.unwrap_or(0)))
        .collect()
}

/// The `INSERT` enqueuing `phase` of one build (bound last, after the
/// pairs) for every route that wants it, and the (reporter, builder) pairs
/// to bind first; `None` when no route wants it.
pub(crate) fn enqueue_sql(
    d: Dialect,
    routes: &[ReportRoute],
    phase: Phase,
) -> Option<(String, Vec<(String, i64)>)> {
    let pairs = wanting(routes, phase);
    if pairs.is_empty() {
        return None;
    }
    let derived = vec!["SELECT ? AS reporter, ? AS builderid"; pairs.len()].join(" UNION ALL ");
    let sql = insert_sql(d.insert_ignore(), d.now(), &derived, "?", phase);
    let binds = pairs.into_iter().map(|(r, b)| (r.to_owned(), b)).collect();
    Some((sql, binds))
}

fn insert_sql(insert: &str, now: &str, derived: &str, build: &str, phase: Phase) -> String {
    let ended = match phase {
        Phase::Started => "",
        Phase::Finished => " AND b.complete_at IS NOT NULL",
    };
    format!(
        "{insert} INTO report_deliveries \
         (reporter, buildid, phase, state, attempts, next_attempt_at, created_at) \
         SELECT r.reporter, b.id, {p}, 0, 0, {now}, {now} FROM builds b \
         JOIN ({derived}) r ON (r.builderid = b.builderid OR r.builderid = 0) \
         WHERE b.id = {build}{ended}",
        p = phase as i64,
    )
}

/// The same `INSERT` as a statement of a one-trip MySQL script (ending in
/// `; `), for the finish of `build_id`; empty when no route wants it. The
/// reporters' names go in as hexadecimal literals, so only hex digits and
/// integers are written into the script text.
pub(crate) fn script_enqueue_finished(routes: &[ReportRoute], build_id: i64) -> String {
    let pairs = wanting(routes, Phase::Finished);
    if pairs.is_empty() {
        return String::new();
    }
    let derived = pairs
        .iter()
        .map(|(r, b)| {
            format!(
                "SELECT CONVERT(X'{}' USING utf8mb4) AS reporter, {b} AS builderid",
                hex::encode(r.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let sql = insert_sql(
        "INSERT IGNORE",
        "NOW(6)",
        &derived,
        &build_id.to_string(),
        Phase::Finished,
    );
    format!("{sql}; ")
}

/// In an open write transaction `$tx` of `$store` (dialect `$d`), enqueue
/// `$phase` of build `$build_id` for every reporter that wants it.
macro_rules! enqueue_for_build {
    ($store:expr, $tx:expr, $d:expr, $build_id:expr, $phase:expr) => {{
        let routes = $store.report_routes();
        if let Some((sql, pairs)) = $crate::db::outbox::enqueue_sql($d, &routes, $phase) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (name, builder) in pairs {
                q = q.bind(name).bind(builder);
            }
            q.bind($build_id).execute(&mut *$tx).await?;
        }
    }};
}
pub(crate) use enqueue_for_build;

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<ReportRoute> {
        vec![
            ReportRoute {
                reporter: "gh".into(),
                builder_id: None,
                started: true,
                finished: true,
            },
            ReportRoute {
                reporter: "bot's".into(),
                builder_id: Some(7),
                started: false,
                finished: true,
            },
        ]
    }

    #[test]
    fn only_routes_wanting_the_phase_are_enqueued() {
        let (_, pairs) = enqueue_sql(Dialect::Sqlite, &routes(), Phase::Started).unwrap();
        assert_eq!(pairs, vec![("gh".to_owned(), 0)]);
        let (sql, pairs) = enqueue_sql(Dialect::MySql, &routes(), Phase::Finished).unwrap();
        assert_eq!(pairs.len(), 2);
        assert!(sql.contains("complete_at IS NOT NULL"), "{sql}");
        assert!(sql.starts_with("INSERT IGNORE"), "{sql}");
        assert!(enqueue_sql(Dialect::MySql, &[], Phase::Finished).is_none());
    }

    #[test]
    fn the_script_statement_holds_no_user_text() {
        let sql = script_enqueue_finished(&routes(), 42);
        assert!(!sql.contains("bot's"), "{sql}");
        assert!(sql.contains(&hex::encode("bot's")), "{sql}");
        assert!(sql.contains("WHERE b.id = 42"), "{sql}");
        assert!(script_enqueue_finished(&[], 42).is_empty());
    }
}
