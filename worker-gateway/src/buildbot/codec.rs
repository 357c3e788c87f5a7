//! Buildbot's msgpack messages: one msgpack map with string keys per binary
//! WebSocket frame, always with `op` and `seq_number`. Strings go out as
//! msgpack `str` (never `bin`): the worker decodes with `raw=False` and looks
//! keys up as text.

use rmpv::Value;

/// A decoded message from the worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    pub op: String,
    pub seq: u64,
    pub fields: Vec<(String, Value)>,
}

impl Message {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Why a frame could not be read as a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads one frame's payload.
pub(crate) fn decode(mut bytes: &[u8]) -> Result<Message, DecodeError> {
    let value = rmpv::decode::read_value(&mut bytes)
        .map_err(|e| DecodeError(format!("not msgpack: {e}")))?;
    if !bytes.is_empty() {
        return Err(DecodeError(format!(
            "{} bytes after the msgpack value",
            bytes.len()
        )));
    }
    let Value::Map(entries) = value else {
        return Err(DecodeError("not a msgpack map".to_owned()));
    };
    let mut op = None;
    let mut seq = None;
    let mut fields = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let Some(key) = k.as_str().map(str::to_owned) else {
            return Err(DecodeError("a key is not a string".to_owned()));
        };
        match key.as_str() {
            "op" => op = v.as_str().map(str::to_owned),
            "seq_number" => seq = v.as_u64(),
            _ => fields.push((key, v)),
        }
    }
    match (op, seq) {
        (Some(op), Some(seq)) => Ok(Message { op, seq, fields }),
        _ => Err(DecodeError(
            "no string `op` or no unsigned `seq_number`".to_owned(),
        )),
    }
}

/// Encodes a message: `op`, the fields, then `seq_number`.
pub(crate) fn encode(op: &str, seq: u64, fields: Vec<(&str, Value)>) -> Vec<u8> {
    let mut map = Vec::with_capacity(fields.len() + 2);
    map.push((Value::from("op"), Value::from(op)));
    for (k, v) in fields {
        map.push((Value::from(k), v));
    }
    map.push((Value::from("seq_number"), Value::from(seq)));
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &Value::Map(map));
    out
}

/// The answer to the worker's request `seq`: `null`, or an error text.
pub(crate) fn response(seq: u64, error: Option<&str>) -> Vec<u8> {
    match error {
        None => encode("response", seq, vec![("result", Value::Nil)]),
        Some(text) => encode(
            "response",
            seq,
            vec![
                ("result", Value::from(text)),
                ("is_exception", Value::from(true)),
            ],
        ),
    }
}

/// A map value with string keys.
pub(crate) fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// Looks `key` up in a map value.
pub(crate) fn lookup<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_string_types() {
        let bytes = encode("keepalive", 7, vec![]);
        // fixmap of 2, then fixstr "op": str, not bin.
        assert_eq!(bytes[0], 0x82);
        assert_eq!(bytes[1], 0xa2);
        let m = decode(&bytes).unwrap();
        assert_eq!(m.op, "keepalive");
        assert_eq!(m.seq, 7);
        assert!(m.fields.is_empty());
    }

    #[test]
    fn reads_an_update_as_the_worker_sends_it() {
        let args = Value::Array(vec![
            Value::Array(vec![
                Value::from("stdout"),
                Value::Array(vec![
                    Value::from("hello\n"),
                    Value::Array(vec![Value::from(5)]),
                    Value::Array(vec![Value::from(1.5)]),
                ]),
            ]),
            Value::Array(vec![Value::from("rc"), Value::from(3)]),
        ]);
        let bytes = encode(
            "update",
            4,
            vec![("command_id", Value::from("2")), ("args", args.clone())],
        );
        let m = decode(&bytes).unwrap();
        assert_eq!(m.op, "update");
        assert_eq!(m.get("command_id").and_then(Value::as_str), Some("2"));
        assert_eq!(m.get("args"), Some(&args));
    }

    #[test]
    fn refuses_what_is_not_a_message() {
        assert!(decode(b"\x01").is_err());
        assert!(decode(&encode("x", 1, vec![])[..3]).is_err());
        let no_seq = {
            let mut out = Vec::new();
            rmpv::encode::write_value(&mut out, &map(vec![("op", Value::from("update"))])).unwrap();
            out
        };
        assert!(decode(&no_seq).is_err());
    }

    #[test]
    fn error_responses_carry_is_exception() {
        let m = decode(&response(3, Some("Command frobnicate does not exist."))).unwrap();
        assert_eq!(m.get("is_exception"), Some(&Value::from(true)));
        let ok = decode(&response(3, None)).unwrap();
        assert_eq!(ok.get("result"), Some(&Value::Nil));
        assert_eq!(ok.get("is_exception"), None);
    }
}
