//! The images a Dockerfile needs from the platform before it is built: what each `FROM` (and
//! `COPY --from`) names that is not an earlier stage, with the global `ARG`s substituted as
//! the build will. A caller fetches those its store lacks (the staging service fetches the
//! controller's images by name) before calling [`super::build`].

use std::collections::BTreeMap;

use super::parse::{Dockerfile, Instruction};
use super::words::expand;

/// An image a Dockerfile names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// The line of the instruction.
    pub line: usize,
    /// `FROM` or `COPY --from` (`ADD --from`).
    pub instruction: &'static str,
    /// The name or digest, variables substituted.
    pub reference: String,
}

impl Dockerfile {
    /// The images this Dockerfile names besides its own stages, in order, each once, with
    /// `build_args` and the global `ARG` defaults substituted. A `FROM` whose variables cannot
    /// be substituted is left out (the build fails on it, naming its line), as is a
    /// `COPY --from` with a variable (its value may come from the stage's own `ARG`s).
    pub fn base_images(&self, build_args: &BTreeMap<String, String>) -> Vec<BaseImage> {
        let mut global: Vec<(String, Option<String>)> = Vec::new();
        for arg in &self.global_args {
            let lookup = |n: &str| value_of(&global, n);
            let value = match (build_args.get(&arg.name), &arg.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(raw)) => expand(raw, &lookup).ok(),
                (None, None) => value_of(&global, &arg.name),
            };
            global.push((arg.name.clone(), value));
        }
        let lookup = |n: &str| value_of(&global, n);
        let mut out: Vec<BaseImage> = Vec::new();
        let mut add = |line, instruction, reference: String| {
            if !out.iter().any(|b| b.reference == reference) {
                out.push(BaseImage {
                    line,
                    instruction,
                    reference,
                });
            }
        };
        for (i, stage) in self.stages.iter().enumerate() {
            let earlier = |r: &str| {
                let lower = r.to_lowercase();
                self.stages[..i]
                    .iter()
                    .any(|s| s.name.as_deref() == Some(lower.as_str()))
                    || r.parse::<usize>().is_ok_and(|n| n < i)
            };
            if let Ok(from) = expand(&stage.from, &lookup) {
                if !earlier(&from) {
                    add(stage.line, "FROM", from);
                }
            }
            for step in &stage.steps {
                if let Instruction::Copy(copy) = &step.instruction {
                    let from = copy.from.as_deref().filter(|f| !f.contains('$'));
                    if let Some(from) = from.filter(|f| !earlier(f)) {
                        let what = if copy.add {
                            "ADD --from"
                        } else {
                            "COPY --from"
                        };
                        add(step.line, what, from.to_string());
                    }
                }
            }
        }
        out
    }
}

fn value_of(args: &[(String, Option<String>)], name: &str) -> Option<String> {
    args.iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn names_other_than_stages_with_global_args_substituted() {
        let dockerfile = parse(
            "ARG BASE=tiny\nARG TOOLS=${BASE}-tools\nFROM $BASE AS build\nRUN true\n\
             FROM ${TOOLS}\nCOPY --from=build /a /a\nCOPY --from=0 /b /b\nCOPY --from=helper /c /c\n\
             FROM build\nFROM tiny\nCOPY --from=$X /d /d\n",
        )
        .unwrap();
        let refs: Vec<(usize, &str, String)> = dockerfile
            .base_images(&BTreeMap::new())
            .into_iter()
            .map(|b| (b.line, b.instruction, b.reference))
            .collect();
        assert_eq!(
            refs,
            vec![
                (3, "FROM", "tiny".to_string()),
                (5, "FROM", "tiny-tools".to_string()),
                (8, "COPY --from", "helper".to_string()),
            ]
        );
        let args = [("BASE".to_string(), "bookworm".to_string())].into();
        let refs = dockerfile.base_images(&args);
        assert_eq!(refs[0].reference, "bookworm");
        assert_eq!(refs[1].reference, "bookworm-tools");
    }
}
