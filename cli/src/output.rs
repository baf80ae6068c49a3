//! Output for people and scripts: aligned tables, colour only on a terminal and never with
//! `NO_COLOR`, and `--json` printing the API's JSON as it came.

use std::io::IsTerminal;

use serde_json::Value;

/// How the command was asked to print.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    /// `--json`: machine-readable output only.
    pub json: bool,
}

/// True when colour may be used on stdout.
pub fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// `s` in bold (no escape codes without colour).
pub fn bold(s: &str) -> String {
    paint(s, "1")
}

/// `s` in red on a terminal's stderr (for `FAILED`).
pub fn paint_err(s: &str) -> String {
    if std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
    {
        format!("\x1b[31;1m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// `s` in an ANSI colour `code` when colour is on.
pub fn paint(s: &str, code: &str) -> String {
    if color() {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

impl Out {
    /// Prints `v` as pretty JSON.
    pub fn json(&self, v: &Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        );
    }

    /// Prints a line for people (nothing with `--json`, where stdout is for the JSON).
    pub fn say(&self, line: impl AsRef<str>) {
        if self.json {
            eprintln!("{}", line.as_ref());
        } else {
            println!("{}", line.as_ref());
        }
    }
}

/// Prints a table: a bold header and columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    format!("{c}{}", " ".repeat(pad + 3))
                }
            })
            .collect::<String>()
    };
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let head_line = line(head);
    println!("{}", bold(head_line.trim_end()));
    for row in rows {
        println!("{}", line(row.clone()).trim_end());
    }
}

/// A string field of `v`, or "".
pub fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Bytes for people: `12.3M`, `1G`, `512K`.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || v >= 100.0 || (v - v.round()).abs() < 0.05 {
        format!("{:.0}{}", v, UNITS[i])
    } else {
        format!("{:.1}{}", v, UNITS[i])
    }
}

/// A duration in seconds for people: `3s`, `4m12s`, `2h5m`, `3d4h`.
pub fn ago(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_like_cf() {
        assert_eq!(bytes(512.0), "512B");
        assert_eq!(bytes(1536.0), "1.5K");
        assert_eq!(bytes(256.0 * 1024.0 * 1024.0), "256M");
        assert_eq!(ago(75), "1m15s");
    }
}
