//! Docker's word processing for the instructions it substitutes variables in (`FROM`, `COPY`,
//! `ADD`, `ENV`, `ARG`, `LABEL`, `WORKDIR`, `USER`, `EXPOSE`): quotes are removed (nothing is
//! expanded inside `'...'`), a backslash escapes the next character, and `$NAME`, `${NAME}`,
//! `${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`, `${NAME+word}`, `${NAME:?message}` and
//! `${NAME?message}` are expanded. `RUN`, `CMD` and `ENTRYPOINT` are left to the shell.

/// Looks a variable up: `Some` if it is set (possibly to the empty string).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Expands `raw` as one word (whitespace is kept).
pub fn expand(raw: &str, lookup: Lookup<'_>) -> Result<String, String> {
    Ok(process(raw, lookup, false)?.join(" "))
}

/// Splits `raw` into words at unquoted whitespace and expands each (for `EXPOSE` and the
/// paths of `COPY`/`ADD`). An expansion never splits a word.
pub fn expand_words(raw: &str, lookup: Lookup<'_>) -> Result<Vec<String>, String> {
    process(raw, lookup, true)
}

fn process(raw: &str, lookup: Lookup<'_>, split: bool) -> Result<Vec<String>, String> {
    let chars: Vec<char> = raw.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether the current word has begun (so that `""` is an empty word, not nothing).
    let mut started = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if split && c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
                i += 1;
            }
            '\\' => {
                started = true;
                if let Some(next) = chars.get(i + 1) {
                    word.push(*next);
                    i += 2;
                } else {
                    word.push('\\');
                    i += 1;
                }
            }
            '\'' => {
                started = true;
                let end = chars[i + 1..]
                    .iter()
                    .position(|c| *c == '\'')
                    .ok_or_else(|| format!("unmatched ' in {raw}"))?;
                word.extend(&chars[i + 1..i + 1 + end]);
                i += end + 2;
            }
            '"' => {
                started = true;
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unmatched \" in {raw}")),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') if matches!(chars.get(i + 1), Some('"' | '\\' | '$')) => {
                            word.push(chars[i + 1]);
                            i += 2;
                        }
                        Some('$') => i = dollar(&chars, i, lookup, &mut word)?,
                        Some(c) => {
                            word.push(*c);
                            i += 1;
                        }
                    }
                }
            }
            '$' => {
                started = true;
                i = dollar(&chars, i, lookup, &mut word)?;
            }
            c => {
                started = true;
                word.push(c);
                i += 1;
            }
        }
    }
    if started || !split {
        words.push(word);
    }
    Ok(words)
}

/// Expands the `$...` at `chars[at]` into `out`; returns the index after it.
fn dollar(
    chars: &[char],
    at: usize,
    lookup: Lookup<'_>,
    out: &mut String,
) -> Result<usize, String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    match chars.get(at + 1) {
        Some('{') => {
            let close = find_close(chars, at + 2)
                .ok_or_else(|| "missing } in a ${...} substitution".to_string())?;
            let inner: String = chars[at + 2..close].iter().collect();
            out.push_str(&braced(&inner, lookup)?);
            Ok(close + 1)
        }
        Some(c) if is_name(*c) => {
            let mut end = at + 1;
            while end < chars.len() && is_name(chars[end]) {
                end += 1;
            }
            let name: String = chars[at + 1..end].iter().collect();
            out.push_str(&lookup(&name).unwrap_or_default());
            Ok(end)
        }
        _ => {
            out.push('$');
            Ok(at + 1)
        }
    }
}

/// The index of the `}` closing a `${` whose content starts at `from` (nested `${}` allowed).
fn find_close(chars: &[char], from: usize) -> Option<usize> {
    let mut depth = 0;
    let mut i = from;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// `NAME`, `NAME:-word`, `NAME-word`, `NAME:+word`, `NAME+word`, `NAME:?msg`, `NAME?msg`.
fn braced(inner: &str, lookup: Lookup<'_>) -> Result<String, String> {
    let name_end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_end);
    if name.is_empty() {
        return Err(format!("bad substitution ${{{inner}}}"));
    }
    let value = lookup(name);
    let (colon, rest) = match rest.strip_prefix(':') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    // With a colon, an empty value counts as unset.
    let set = value.as_deref().is_some_and(|v| !colon || !v.is_empty());
    let word = |w: &str| expand(w, lookup);
    match rest.chars().next() {
        None if !colon => Ok(value.unwrap_or_default()),
        Some('-') => {
            if set {
                Ok(value.unwrap_or_default())
            } else {
                word(&rest[1..])
            }
        }
        Some('+') => {
            if set {
                word(&rest[1..])
            } else {
                Ok(String::new())
            }
        }
        Some('?') => {
            if set {
                Ok(value.unwrap_or_default())
            } else {
                let message = word(&rest[1..])?;
                Err(format!(
                    "{name}: {}",
                    if message.is_empty() {
                        "is not set"
                    } else {
                        &message
                    }
                ))
            }
        }
        _ => Err(format!("bad substitution ${{{inner}}}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "A" => Some("apple".into()),
            "EMPTY" => Some(String::new()),
            "SPACED" => Some("a b".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_like_docker() {
        let e = |s: &str| expand(s, &vars).unwrap();
        assert_eq!(e("$A"), "apple");
        assert_eq!(e("${A}s"), "apples");
        assert_eq!(e("/x/$A/y"), "/x/apple/y");
        assert_eq!(e("${NOPE:-pear}"), "pear");
        assert_eq!(e("${EMPTY:-pear}"), "pear");
        assert_eq!(e("${EMPTY-pear}"), "");
        assert_eq!(e("${A:+set}"), "set");
        assert_eq!(e("${NOPE:+set}"), "");
        assert_eq!(e("${NOPE:-${A}}"), "apple");
        assert_eq!(e("'$A'"), "$A");
        assert_eq!(e("\"$A pie\""), "apple pie");
        assert_eq!(e("\\$A"), "$A");
        assert_eq!(e("a\\ b"), "a b");
        assert_eq!(e("$NOPE"), "");
        assert_eq!(e("cost: $"), "cost: $");
        assert!(expand("${NOPE:?needed}", &vars)
            .unwrap_err()
            .contains("needed"));
        assert!(expand("${A", &vars).is_err());
        assert!(expand("'open", &vars).is_err());
    }

    #[test]
    fn words_split_at_unquoted_spaces_only() {
        let w = |s: &str| expand_words(s, &vars).unwrap();
        assert_eq!(w("a  b\tc"), ["a", "b", "c"]);
        assert_eq!(w("\"a b\" c"), ["a b", "c"]);
        assert_eq!(w("$SPACED c"), ["a b", "c"]);
        assert_eq!(w("'' x"), ["", "x"]);
        assert!(w("  ").is_empty());
    }
}
