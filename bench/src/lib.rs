//! What the benchmarks that run a whole platform share: how a run ends. On failure the cells'
//! last log lines are shown; whatever the outcome everything the run made is removed; the
//! figures are printed as the last line, one JSON object, with what was left after clean-up
//! (a run that leaves anything fails).

use anyhow::bail;
use kiln_e2e::platform::Leftovers;
use serde_json::{json, Value};

/// Ends a run whose outcome is `result`: see the module's doc.
pub fn finish(result: anyhow::Result<Value>, leftovers: &mut Leftovers) -> anyhow::Result<()> {
    if result.is_err() {
        for (name, p) in &leftovers.cells {
            eprintln!("--- {name}'s log (last lines) ---\n{}", tail(&p.log(), 30));
        }
    }
    let left = leftovers.clean();
    let mut figures = result?;
    figures["left_after_cleanup"] = json!(left);
    println!("{figures}");
    if !left.is_empty() {
        bail!("the benchmark left {left:?}");
    }
    Ok(())
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
