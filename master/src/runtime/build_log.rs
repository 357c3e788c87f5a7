//! A step's log on its way to the database: output is gathered into chunks
//! (at most `CHUNK` bytes, or whatever arrived within `FLUSH_EVERY`, so the
//! dashboard can follow it live) and each chunk is one row of `logchunks`.
//! Memory stays at one chunk however long the log grows.

use std::time::{Duration, Instant};

use crate::db::{DbError, Store};

pub const CHUNK: usize = 128 * 1024;
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct BuildLog {
    store: Store,
    log_id: i64,
    seq: i64,
    buf: Vec<u8>,
    last_flush: Instant,
}

impl BuildLog {
    pub fn new(store: Store, log_id: i64) -> BuildLog {
        BuildLog {
            store,
            log_id,
            seq: 0,
            buf: Vec::with_capacity(CHUNK),
            last_flush: Instant::now(),
        }
    }

    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), DbError> {
        while !data.is_empty() {
            let room = CHUNK - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() >= CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// A line the master itself adds (the command line, why it was killed).
    pub async fn note(&mut self, text: &str) -> Result<(), DbError> {
        let mut line = String::with_capacity(text.len() + 1);
        if !self.buf.is_empty() && !self.buf.ends_with(b"\n") {
            line.push('\n');
        }
        line.push_str(text);
        line.push('\n');
        self.write(line.as_bytes()).await
    }

    pub fn flush_due(&self) -> bool {
        !self.buf.is_empty() && self.last_flush.elapsed() >= FLUSH_EVERY
    }

    pub async fn flush(&mut self) -> Result<(), DbError> {
        self.last_flush = Instant::now();
        if self.buf.is_empty() {
            return Ok(());
        }
        super::build::retry_transient(|| {
            self.store
                .append_log_chunk(self.log_id, self.seq, &self.buf)
        })
        .await?;
        self.seq += 1;
        self.buf.clear();
        Ok(())
    }
}
