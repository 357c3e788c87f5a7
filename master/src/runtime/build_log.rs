//! A step's log on its way to the database: output is gathered into chunks
//! (at most `CHUNK` bytes, or whatever arrived within `FLUSH_EVERY`, so the
//! dashboard can follow it live) and each chunk is one row of `logchunks`.
//! Memory stays at one chunk however long the log grows.
//!
//! Everything written passes through the build's secret [`Masker`] first, so
//! no secret value reaches the database, however the output was cut into
//! pieces; [`BuildLog::close`] releases what the masker held back.

use std::time::{Duration, Instant};

use crate::db::{DbError, Store};
use crate::secrets::Masker;

pub const CHUNK: usize = 128 * 1024;
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct BuildLog {
    store: Store,
    log_id: i64,
    seq: i64,
    buf: Vec<u8>,
    last_flush: Instant,
    masker: Masker,
    /// The last byte written (masked or not), to start notes on a new line.
    last_byte: Option<u8>,
}

impl BuildLog {
    pub fn new(store: Store, log_id: i64) -> BuildLog {
        BuildLog {
            store,
            log_id,
            seq: 0,
            buf: Vec::with_capacity(CHUNK),
            last_flush: Instant::now(),
            masker: Masker::default(),
            last_byte: None,
        }
    }

    /// Masks the values `masker` knows in everything written from now on.
    pub fn masked(mut self, masker: Masker) -> BuildLog {
        self.masker = masker;
        self
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), DbError> {
        if let Some(b) = data.last() {
            self.last_byte = Some(*b);
        }
        if self.masker.is_empty() {
            // Nothing to hide (the usual case): no copy.
            return self.append(data).await;
        }
        let data = self.masker.push(data);
        self.append(&data).await
    }

    /// Adds bytes that have been through the masker.
    async fn append(&mut self, mut data: &[u8]) -> Result<(), DbError> {
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
        if self.last_byte.is_some_and(|b| b != b'\n') {
            line.push('\n');
        }
        line.push_str(text);
        line.push('\n');
        self.write(line.as_bytes()).await
    }

    /// The end of the log: what the masker held back, then a flush.
    pub async fn close(&mut self) -> Result<(), DbError> {
        let tail = self.masker.finish();
        self.append(&tail).await?;
        self.flush().await
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
