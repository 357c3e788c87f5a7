//! Query-string filters, parsed by hand so a bad value gets a 400 that
//! names the parameter.

use std::collections::HashMap;

use super::error::ApiError;

pub struct Params(pub HashMap<String, String>);

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

impl Params {
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(key).map(String::as_str) {
            None | Some("") => Ok(None),
            Some("true") | Some("1") => Ok(Some(true)),
            Some("false") | Some("0") => Ok(Some(false)),
            Some(v) => Err(ApiError::BadRequest(format!(
                "{key} must be true or false, not {v:?}"
            ))),
        }
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.0.get(key).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(format!("{key} must be an integer, not {v:?}"))),
        }
    }

    pub fn string(&self, key: &str) -> Option<String> {
        self.0.get(key).filter(|v| !v.is_empty()).cloned()
    }

    /// `limit` (default 100, at most 1000) and `offset`.
    pub fn page(&self) -> Result<(i64, i64), ApiError> {
        let limit = self.int("limit")?.unwrap_or(DEFAULT_LIMIT);
        let offset = self.int("offset")?.unwrap_or(0);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        if offset < 0 {
            return Err(ApiError::BadRequest("offset must not be negative".into()));
        }
        Ok((limit, offset))
    }

    /// Refuses parameters this route does not know (a typo is not a silent no-op).
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        for k in self.0.keys() {
            if !known.contains(&k.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {k:?}; known: {}",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }
}
