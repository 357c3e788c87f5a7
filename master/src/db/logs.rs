//! Step logs: a `logs` row per log, its content appended as numbered
//! `logchunks` rows and read back in order — whole ([`Store::read_log`], for
//! small logs and tests) or streamed a few chunks at a time
//! ([`Store::log_span`] then [`Store::log_stream`]), so serving a log of any
//! size costs the master a few chunks of memory.

use futures::Stream;
use sqlx::AssertSqlSafe;

use super::{BeginWrite, DbError, Store};

/// Chunks fetched per query while streaming (each is at most 128 KiB).
const STREAM_BATCH: i64 = 8;

/// What a streamed read of a log covers, fixed when it starts: a log still
/// being written grows, but the read ends where its length said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSpan {
    /// The log's length in bytes when the read started.
    pub len: u64,
    /// Bytes the read sends: from its start to `len`.
    send: u64,
    /// First chunk to send, and how many of its bytes to skip.
    first_seq: i64,
    skip: usize,
    /// Last chunk to send (`first_seq > last_seq`: nothing to send).
    last_seq: i64,
}

/// From chunk lengths (in `seq` order), the span of bytes `from..`.
fn span_of(chunks: &[(i64, i64)], from: u64) -> LogSpan {
    let len: u64 = chunks.iter().map(|(_, l)| *l as u64).sum();
    let mut start = 0u64;
    for (seq, l) in chunks {
        let l = *l as u64;
        if from < start + l {
            return LogSpan {
                len,
                send: len - from,
                first_seq: *seq,
                skip: (from - start) as usize,
                last_seq: chunks.last().map_or(*seq, |c| c.0),
            };
        }
        start += l;
    }
    LogSpan {
        len,
        send: 0,
        first_seq: 1,
        skip: 0,
        last_seq: 0,
    }
}

impl Store {
    /// Create log `name` of a step; creating it again returns the same log.
    pub async fn create_log(&self, step_id: i64, name: &str) -> Result<i64, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "{} INTO logs (stepid, name, type, num_chunks) VALUES (?, ?, 's', 0)",
                d.insert_ignore()
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(step_id)
                .bind(name)
                .execute(pool)
                .await?;
            Ok(
                sqlx::query_scalar("SELECT id FROM logs WHERE stepid = ? AND name = ?")
                    .bind(step_id)
                    .bind(name)
                    .fetch_one(pool)
                    .await?,
            )
        })
    }

    /// Store chunk `seq` of a log. Writing the same `seq` again replaces it, so
    /// a retried append is harmless.
    pub async fn append_log_chunk(
        &self,
        log_id: i64,
        seq: i64,
        content: &[u8],
    ) -> Result<(), DbError> {
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            sqlx::query("REPLACE INTO logchunks (logid, seq, content) VALUES (?, ?, ?)")
                .bind(log_id)
                .bind(seq)
                .bind(content)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE logs SET num_chunks = CASE WHEN num_chunks > ? THEN num_chunks ELSE ? END \
                 WHERE id = ?",
            )
            .bind(seq)
            .bind(seq + 1)
            .bind(log_id)
            .execute(&mut *tx)
            .await?;
            commit_checked!(tx, d);
            Ok(())
        })
    }

    /// The whole log, chunks concatenated in `seq` order.
    pub async fn read_log(&self, log_id: i64) -> Result<Vec<u8>, DbError> {
        with_pool!(self, |pool, d| {
            let chunks: Vec<Vec<u8>> =
                sqlx::query_scalar("SELECT content FROM logchunks WHERE logid = ? ORDER BY seq")
                    .bind(log_id)
                    .fetch_all(pool)
                    .await?;
            Ok(chunks.concat())
        })
    }

    /// Where a streamed read of `log_id` from byte `from` starts and ends
    /// (only chunk lengths are read here, never their content).
    pub async fn log_span(&self, log_id: i64, from: u64) -> Result<LogSpan, DbError> {
        let chunks: Vec<(i64, i64)> = with_pool!(self, |pool, d| {
            sqlx::query_as(
                "SELECT seq, CAST(LENGTH(content) AS SIGNED) FROM logchunks \
                 WHERE logid = ? ORDER BY seq",
            )
            .bind(log_id)
            .fetch_all(pool)
            .await?
        });
        Ok(span_of(&chunks, from))
    }

    /// The bytes of `span`, a few chunks per query: memory stays flat
    /// however large the log.
    pub fn log_stream(
        &self,
        log_id: i64,
        span: LogSpan,
    ) -> impl Stream<Item = Result<Vec<u8>, DbError>> + Send + 'static {
        let store = self.clone();
        async_stream::try_stream! {
            let mut next = span.first_seq;
            let mut skip = span.skip;
            let mut left = span.send;
            while next <= span.last_seq {
                let rows = store.log_chunks(log_id, next, span.last_seq).await?;
                if rows.is_empty() {
                    break;
                }
                for (seq, mut content) in rows {
                    next = seq + 1;
                    if skip > 0 {
                        content.drain(..skip.min(content.len()));
                        skip = 0;
                    }
                    // A chunk rewritten since the span was taken (a retried
                    // append) may not grow the read past the length it announced.
                    let take = (content.len() as u64).min(left) as usize;
                    content.truncate(take);
                    left -= take as u64;
                    yield content;
                }
            }
        }
    }

    async fn log_chunks(
        &self,
        log_id: i64,
        from_seq: i64,
        last_seq: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, DbError> {
        with_pool!(self, |pool, d| {
            Ok(sqlx::query_as(
                "SELECT seq, content FROM logchunks WHERE logid = ? AND seq >= ? AND seq <= ? \
                 ORDER BY seq LIMIT ?",
            )
            .bind(log_id)
            .bind(from_seq)
            .bind(last_seq)
            .bind(STREAM_BATCH)
            .fetch_all(pool)
            .await?)
        })
    }

    /// The log `name` of step `step_number` (from 0) of a build.
    pub async fn step_log_id(
        &self,
        build_id: i64,
        step_number: i32,
        name: &str,
    ) -> Result<Option<i64>, DbError> {
        with_pool!(self, |pool, d| {
            Ok(sqlx::query_scalar(
                "SELECT l.id FROM logs l JOIN steps s ON s.id = l.stepid \
                 WHERE s.buildid = ? AND s.number = ? AND l.name = ?",
            )
            .bind(build_id)
            .bind(step_number)
            .bind(name)
            .fetch_optional(pool)
            .await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_start_inside_the_right_chunk() {
        let chunks = [(0, 10), (1, 5), (2, 7)];
        let all = span_of(&chunks, 0);
        assert_eq!(
            (all.len, all.first_seq, all.skip, all.last_seq),
            (22, 0, 0, 2)
        );
        let mid = span_of(&chunks, 12);
        assert_eq!((mid.first_seq, mid.skip, mid.send), (1, 2, 10));
        let edge = span_of(&chunks, 15);
        assert_eq!((edge.first_seq, edge.skip), (2, 0));
        let past = span_of(&chunks, 22);
        assert!(past.first_seq > past.last_seq);
        assert_eq!(past.len, 22);
        assert!(span_of(&[], 0).first_seq > span_of(&[], 0).last_seq);
    }
}
