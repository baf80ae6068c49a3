//! Process types: the `bin/release` YAML of the last buildpack, overridden by the app's
//! Procfile, overridden in turn by an explicit start command.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Deserialize, Default)]
struct Release {
    #[serde(default)]
    default_process_types: Option<BTreeMap<String, serde_yaml::Value>>,
}

/// The process types in a `bin/release` output. Empty output means none.
pub(crate) fn parse_release(yaml: &str) -> Result<BTreeMap<String, String>, String> {
    if yaml.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let release: Release =
        serde_yaml::from_str(yaml).map_err(|e| format!("printed invalid release YAML ({e})"))?;
    let mut types = BTreeMap::new();
    for (kind, command) in release.default_process_types.unwrap_or_default() {
        match command {
            serde_yaml::Value::String(c) => {
                types.insert(kind, c);
            }
            serde_yaml::Value::Null => {}
            other => {
                return Err(format!(
                    "printed release YAML whose default_process_types.{kind} is not a string: {}",
                    serde_yaml::to_string(&other).unwrap_or_default().trim()
                ))
            }
        }
    }
    Ok(types)
}

/// Parses a Procfile: `type: command` per line, blank lines and `#` comments ignored.
pub(crate) fn parse_procfile(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut types = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((kind, command)) = line.split_once(':') else {
            return Err(format!(
                "Procfile line {}: expected `type: command`, got `{line}`",
                n + 1
            ));
        };
        let kind = kind.trim();
        if kind.is_empty()
            || !kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "Procfile line {}: process type `{kind}` may hold only letters, digits, `-` and `_`",
                n + 1
            ));
        }
        let command = command.trim();
        if command.is_empty() {
            return Err(format!(
                "Procfile line {}: process type `{kind}` has no command",
                n + 1
            ));
        }
        types.insert(kind.to_string(), command.to_string());
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_yaml_gives_process_types_and_bad_yaml_is_named() {
        let t = parse_release("---\ndefault_process_types:\n  web: python3 app.py\n  worker: x\n")
            .unwrap();
        assert_eq!(t["web"], "python3 app.py");
        assert_eq!(t.len(), 2);
        assert!(parse_release("").unwrap().is_empty());
        assert!(parse_release("--- {}\n").unwrap().is_empty());
        let err = parse_release("default_process_types: [web: \n").unwrap_err();
        assert!(err.contains("invalid release YAML"), "{err}");
        let err = parse_release("default_process_types:\n  web: [1, 2]\n").unwrap_err();
        assert!(
            err.contains("default_process_types.web is not a string"),
            "{err}"
        );
    }

    #[test]
    fn procfile_lines_and_errors() {
        let t = parse_procfile("# comment\nweb: ./server --port $PORT\n\nworker:  sh -c 'a: b'\n")
            .unwrap();
        assert_eq!(t["web"], "./server --port $PORT");
        assert_eq!(t["worker"], "sh -c 'a: b'");
        assert!(parse_procfile("web ./server")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_procfile("we b: x").unwrap_err().contains("letters"));
        assert!(parse_procfile("web:").unwrap_err().contains("no command"));
    }
}
