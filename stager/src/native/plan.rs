//! The build plan of a Cloud Native Buildpacks group: each buildpack's detect writes what it
//! `provides` and `requires`; every require must have a provider in the group, and each
//! buildpack's `bin/build` gets, as its buildpack plan, the required entries it provides.

use toml::{Table, Value};

/// One buildpack's detect output, parsed.
#[derive(Debug, Default, Clone)]
pub(crate) struct DetectPlan {
    provides: Vec<String>,
    requires: Vec<Table>,
}

impl DetectPlan {
    /// Parses a build plan written by `bin/detect` (empty means neither provides nor requires).
    pub(crate) fn parse(text: &str) -> Result<DetectPlan, String> {
        let plan: Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let tables = |key: &str| -> Result<Vec<Table>, String> {
            match plan.get(key) {
                None => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::Table(t) if t.get("name").is_some_and(Value::is_str) => {
                            Ok(t.clone())
                        }
                        _ => Err(format!("every [[{key}]] needs a name")),
                    })
                    .collect(),
                Some(_) => Err(format!("`{key}` must be an array of tables ([[{key}]])")),
            }
        };
        let provides = tables("provides")?
            .iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        Ok(DetectPlan {
            provides,
            requires: tables("requires")?,
        })
    }
}

fn name(t: &Table) -> &str {
    t.get("name").and_then(Value::as_str).unwrap_or_default()
}

/// The buildpack plan (TOML, `[[entries]]`) of each buildpack of the group, or the first
/// require that no buildpack provides: (requirer index, entry name).
pub(crate) fn buildpack_plans(group: &[DetectPlan]) -> Result<Vec<String>, (usize, String)> {
    for (i, plan) in group.iter().enumerate() {
        if let Some(orphan) = plan.requires.iter().find(|r| {
            !group
                .iter()
                .any(|p| p.provides.iter().any(|n| n == name(r)))
        }) {
            return Err((i, name(orphan).to_string()));
        }
    }
    Ok(group
        .iter()
        .map(|plan| {
            let entries: Vec<Value> = group
                .iter()
                .flat_map(|p| &p.requires)
                .filter(|r| plan.provides.iter().any(|n| n == name(r)))
                .map(|r| Value::Table(r.clone()))
                .collect();
            let mut out = Table::new();
            out.insert("entries".into(), Value::Array(entries));
            toml::to_string(&out).unwrap_or_default()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_get_the_entries_required_of_them() {
        let node = DetectPlan::parse("[[provides]]\nname = \"node\"\n").unwrap();
        let npm = DetectPlan::parse(
            "[[provides]]\nname = \"modules\"\n[[requires]]\nname = \"node\"\n[requires.metadata]\nlaunch = true\n[[requires]]\nname = \"modules\"\n",
        )
        .unwrap();
        let plans = buildpack_plans(&[node, npm]).unwrap();
        assert!(
            plans[0].contains("name = \"node\"") && plans[0].contains("launch = true"),
            "{}",
            plans[0]
        );
        assert!(
            plans[1].contains("name = \"modules\"") && !plans[1].contains("\"node\""),
            "{}",
            plans[1]
        );
    }

    #[test]
    fn a_require_nobody_provides_is_named() {
        let lonely = DetectPlan::parse("[[requires]]\nname = \"jdk\"\n").unwrap();
        assert_eq!(
            buildpack_plans(&[lonely]).unwrap_err(),
            (0, "jdk".to_string())
        );
        assert!(DetectPlan::parse("[[requires]\n").is_err());
        assert!(DetectPlan::parse("requires = 3\n")
            .unwrap_err()
            .contains("array of tables"));
        assert!(DetectPlan::parse("").unwrap().requires.is_empty());
    }
}
