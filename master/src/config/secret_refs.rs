//! Secret references in the cluster file: `${secret:NAME}` inside a step's
//! `command` arguments, `env` values, a git step's `repository` and a
//! builder's `env` values. `$${secret:NAME}` stands for the text
//! `${secret:NAME}` itself. A name is letters, digits, `_`, `.` and `-`,
//! not starting with `.` or `-` (it is also a file name in a directory
//! provider, so it can never climb out of it).

/// Where a reference begins.
const OPEN: &str = "${secret:";
/// Longest secret name accepted.
pub const MAX_NAME: usize = 128;

/// Why a text's references cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("`${{secret:` without a closing `}}`")]
    Unclosed,
    #[error("bad secret name {0:?}: use letters, digits, `_`, `.` and `-` (not first)")]
    BadName(String),
}

/// Whether `name` may name a secret.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// One piece of a text: literal text, or a reference to a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Secret(&'a str),
}

/// Splits `text` into literal pieces and references.
pub fn parse(text: &str) -> Result<Vec<Piece<'_>>, RefError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        // `$${secret:` is the escaped, literal form: keep one `$`.
        if at > 0 && rest.as_bytes()[at - 1] == b'$' {
            out.push(Piece::Text(&rest[..at - 1]));
            out.push(Piece::Text(OPEN));
            rest = &rest[at + OPEN.len()..];
            continue;
        }
        out.push(Piece::Text(&rest[..at]));
        let after = &rest[at + OPEN.len()..];
        let end = after.find('}').ok_or(RefError::Unclosed)?;
        let name = &after[..end];
        if !valid_name(name) {
            return Err(RefError::BadName(name.to_owned()));
        }
        out.push(Piece::Secret(name));
        rest = &after[end + 1..];
    }
    out.push(Piece::Text(rest));
    out.retain(|p| *p != Piece::Text(""));
    Ok(out)
}

/// The names `text` refers to, in order (repeats kept).
pub fn names(text: &str) -> Result<Vec<&str>, RefError> {
    Ok(parse(text)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Secret(n) => Some(n),
            Piece::Text(_) => None,
        })
        .collect())
}

/// `text` with each reference replaced by what `value` gives for its name.
pub fn substitute<E>(
    text: &str,
    mut value: impl FnMut(&str) -> Result<String, E>,
) -> Result<String, E>
where
    E: From<RefError>,
{
    let mut out = String::with_capacity(text.len());
    for p in parse(text)? {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Secret(n) => out.push_str(&value(n)?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_references_and_keeps_the_rest() {
        let p = parse("curl -H 'token: ${secret:deploy_token}' x").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Text("curl -H 'token: "),
                Piece::Secret("deploy_token"),
                Piece::Text("' x"),
            ]
        );
        assert_eq!(names("${secret:a}${secret:b.c-d}").unwrap(), ["a", "b.c-d"]);
        assert_eq!(names("plain $HOME ${HOME}").unwrap(), Vec::<&str>::new());
    }

    #[test]
    fn an_escaped_reference_is_text() {
        let s = substitute::<RefError>("a $${secret:x} b", |_| Ok("VALUE".into())).unwrap();
        assert_eq!(s, "a ${secret:x} b");
        let s =
            substitute::<RefError>("${secret:x}/${secret:x}", |n| Ok(n.to_uppercase())).unwrap();
        assert_eq!(s, "X/X");
    }

    #[test]
    fn bad_references_are_refused() {
        assert_eq!(parse("${secret:abc"), Err(RefError::Unclosed));
        assert_eq!(
            parse("${secret:../etc/passwd}"),
            Err(RefError::BadName("../etc/passwd".into()))
        );
        assert_eq!(parse("${secret:}"), Err(RefError::BadName(String::new())));
        assert!(valid_name("DEPLOY_TOKEN"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
    }
}
