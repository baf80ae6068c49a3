//! From Dockerfile text to stages of typed instructions, each with its 1-based line number.
//!
//! The structure (where instructions start and end, key/value pairs, flags, JSON arrays) comes
//! from the `dockerfile-parser` crate; the words Docker substitutes variables in are kept as
//! their raw source text here and expanded when the build reaches them (see
//! [`super::words`]), since their values depend on `ARG`s, build args and the base image.
//! Everything Kiln cannot build faithfully is refused here, before anything runs, naming the
//! line and what to do instead.

use dockerfile_parser as dp;

use super::error::DockerfileError;

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    /// `ARG`s before the first `FROM` (usable in `FROM`, and in a stage that declares them
    /// again without a value).
    pub global_args: Vec<Arg>,
    /// The stages, in order; the last one is the image built.
    pub stages: Vec<Stage>,
}

/// One `FROM` and the instructions up to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Its position (`COPY --from=0`).
    pub index: usize,
    /// Its `AS` name, lowercased as Docker compares them.
    pub name: Option<String>,
    /// The `FROM` image as written (variables not yet expanded): a stack or image of the store
    /// by name or digest, or an earlier stage.
    pub from: String,
    /// The line of the `FROM`.
    pub line: usize,
    /// The rest of the stage.
    pub steps: Vec<Step>,
}

/// One instruction after `FROM`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 1-based line where it starts.
    pub line: usize,
    /// The instruction as written, on one line (for the log).
    pub text: String,
    /// What it asks for.
    pub instruction: Instruction,
}

/// An `ARG`: its name and default value (raw).
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    /// Name.
    pub name: String,
    /// Default, as written.
    pub default: Option<String>,
}

/// The shell form (`sh -c`) or the exec form (a JSON array) of `RUN`, `CMD`, `ENTRYPOINT`.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Run by `/bin/sh -c`.
    Shell(String),
    /// Run as is.
    Exec(Vec<String>),
}

impl Command {
    /// The argv: `["/bin/sh", "-c", text]` for the shell form.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Exec(v) => v.clone(),
        }
    }
}

/// `COPY` or `ADD`, words raw.
#[derive(Debug, Clone, PartialEq)]
pub struct Copy {
    /// `ADD` (local tar archives are extracted) rather than `COPY`.
    pub add: bool,
    /// `--from=<stage or image>`.
    pub from: Option<String>,
    /// `--chown=<user>[:<group>]`.
    pub chown: Option<String>,
    /// `--chmod=<octal>`.
    pub chmod: Option<String>,
    /// Source paths or globs.
    pub sources: Vec<String>,
    /// Destination.
    pub dest: String,
}

/// The instructions Kiln builds.
#[derive(Debug, Clone, PartialEq)]
pub enum Instruction {
    /// `RUN`.
    Run(Command),
    /// `COPY` / `ADD`.
    Copy(Copy),
    /// `ENV` pairs (values raw).
    Env(Vec<(String, String)>),
    /// `ARG` in a stage.
    Arg(Arg),
    /// `WORKDIR` (raw).
    Workdir(String),
    /// `USER` (raw).
    User(String),
    /// `EXPOSE` (raw).
    Expose(String),
    /// `LABEL` pairs (raw).
    Label(Vec<(String, String)>),
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
}

/// Parses `text`: see the [module docs](self).
pub fn parse(text: &str) -> Result<Dockerfile, DockerfileError> {
    check_directives(text)?;
    let parsed = dp::Dockerfile::parse(text).map_err(|e| syntax_error(text, &e))?;
    let line_of = |start: usize| text[..start.min(text.len())].matches('\n').count() + 1;
    let raw = |span: &dp::Span| {
        text.get(span.start..span.end)
            .unwrap_or_default()
            .to_string()
    };
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in &parsed.instructions {
        let span = ins.span();
        let line = line_of(span.start);
        let whole = one_line(&raw(&span));
        let unsupported = |name: &str, hint: &str| DockerfileError::Unsupported {
            line,
            instruction: name.to_string(),
            hint: hint.to_string(),
        };
        let invalid = |reason: String| DockerfileError::Syntax { line, reason };
        if let dp::Instruction::From(from) = ins {
            if let Some(flag) = from.flags.first() {
                return Err(unsupported(
                    &format!("FROM --{}", flag.name.content),
                    "images are built for the platform's own architecture; remove the flag",
                ));
            }
            stages.push(Stage {
                index: stages.len(),
                name: from.alias.as_ref().map(|a| a.content.to_lowercase()),
                from: from.image.content.clone(),
                line,
                steps: Vec::new(),
            });
            continue;
        }
        let instruction = match ins {
            dp::Instruction::From(_) => continue,
            dp::Instruction::Arg(arg) => {
                let arg = Arg {
                    name: arg.name.content.clone(),
                    default: arg.value.as_ref().map(|v| raw(&v.span)),
                };
                if stages.is_empty() {
                    global_args.push(arg);
                    continue;
                }
                Instruction::Arg(arg)
            }
            dp::Instruction::Run(run) => {
                let command = command(&run.expr);
                if let Command::Shell(s) = &command {
                    let s = s.trim_start();
                    if s.starts_with("--") {
                        let flag = s.split(['=', ' ']).next().unwrap_or(s);
                        return Err(unsupported(
                            &format!("RUN {flag}"),
                            "RUN flags (--mount, --network, --security) are not available; \
                             RUN has the staging's network rules and no mounts",
                        ));
                    }
                }
                Instruction::Run(command)
            }
            dp::Instruction::Cmd(cmd) => Instruction::Cmd(command(&cmd.expr)),
            dp::Instruction::Entrypoint(ep) => Instruction::Entrypoint(command(&ep.expr)),
            dp::Instruction::Env(env) => Instruction::Env(
                env.vars
                    .iter()
                    .map(|v| (v.key.content.clone(), breakable_raw(text, &v.value)))
                    .collect(),
            ),
            dp::Instruction::Label(label) => Instruction::Label(
                label
                    .labels
                    .iter()
                    .map(|l| (raw(&l.name.span), raw(&l.value.span)))
                    .collect(),
            ),
            dp::Instruction::Copy(copy) => {
                let mut c = Copy {
                    add: false,
                    from: None,
                    chown: None,
                    chmod: None,
                    sources: Vec::new(),
                    dest: String::new(),
                };
                for flag in &copy.flags {
                    let value = raw(&flag.value.span);
                    match flag.name.content.as_str() {
                        "from" => c.from = Some(value),
                        "chown" => c.chown = Some(value),
                        "chmod" => c.chmod = Some(value),
                        other => return Err(unsupported(&format!("COPY --{other}"), COPY_FLAGS)),
                    }
                }
                let mut paths: Vec<String> = copy.sources.iter().map(|s| raw(&s.span)).collect();
                paths.push(raw(&copy.destination.span));
                if let Some(first) = copy.sources.first() {
                    if first.content.starts_with('[') {
                        // The JSON form, which the crate splits at spaces: read it whole.
                        let json = text
                            .get(first.span.start..span.end)
                            .map(one_line)
                            .unwrap_or_default();
                        paths = json_array(&json).map_err(invalid)?;
                    }
                }
                if let Some(flag) = paths.iter().find(|p| p.starts_with("--")) {
                    return Err(unsupported(&format!("COPY {flag}"), COPY_FLAGS));
                }
                set_paths(&mut c, paths, line)?;
                Instruction::Copy(c)
            }
            dp::Instruction::Misc(misc) => {
                let name = misc.instruction.content.to_uppercase();
                let args = misc.arguments.to_string();
                let args = args.trim();
                match name.as_str() {
                    "ADD" => Instruction::Copy(add(args, line)?),
                    "WORKDIR" => Instruction::Workdir(args.to_string()),
                    "USER" => Instruction::User(args.to_string()),
                    "EXPOSE" => Instruction::Expose(args.to_string()),
                    "HEALTHCHECK" => {
                        return Err(unsupported(
                            "HEALTHCHECK",
                            "set the app's health check in its manifest (health-check-type, \
                         health-check-http-endpoint) instead",
                        ))
                    }
                    "ONBUILD" => {
                        return Err(unsupported(
                            "ONBUILD",
                            "write the instructions into the Dockerfiles that build on this image",
                        ))
                    }
                    "VOLUME" => {
                        return Err(unsupported(
                            "VOLUME",
                            "app instances have no volumes; use a bound service for data",
                        ))
                    }
                    "SHELL" => {
                        return Err(unsupported(
                            "SHELL",
                            "RUN uses /bin/sh -c; call another shell explicitly \
                         (RUN [\"/bin/bash\", \"-c\", \"...\"])",
                        ))
                    }
                    "STOPSIGNAL" => {
                        return Err(unsupported(
                            "STOPSIGNAL",
                            "instances are stopped with SIGTERM, then SIGKILL; remove it",
                        ))
                    }
                    "MAINTAINER" => {
                        return Err(unsupported(
                            "MAINTAINER",
                            "it is deprecated; use LABEL maintainer=\"...\"",
                        ))
                    }
                    _ => {
                        return Err(invalid(format!(
                            "unknown instruction {name}: not a Dockerfile instruction"
                        )))
                    }
                }
            }
        };
        let Some(stage) = stages.last_mut() else {
            return Err(invalid(format!(
                "{} before the first FROM: only ARG may come before FROM",
                whole
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_uppercase()
            )));
        };
        stage.steps.push(Step {
            line,
            text: whole,
            instruction,
        });
    }
    if stages.is_empty() {
        return Err(DockerfileError::Syntax {
            line: 1,
            reason: "the Dockerfile has no FROM instruction".into(),
        });
    }
    Ok(Dockerfile {
        global_args,
        stages,
    })
}

const COPY_FLAGS: &str =
    "COPY and ADD take --from, --chown and --chmod only; remove the other flags";

/// Refuses parser directives and heredocs, which the parser does not know.
fn check_directives(text: &str) -> Result<(), DockerfileError> {
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let lower = trimmed.to_ascii_lowercase();
        if let Some(directive) = lower.strip_prefix('#') {
            let directive = directive.trim_start();
            if directive.starts_with("escape=") && directive.trim_end() != "escape=\\" {
                return Err(DockerfileError::Unsupported {
                    line: i + 1,
                    instruction: "# escape=".into(),
                    hint: "use the default escape character \\".into(),
                });
            }
            continue;
        }
        let mut words = trimmed.split_whitespace();
        let first = words.next().unwrap_or_default().to_ascii_uppercase();
        if matches!(first.as_str(), "RUN" | "COPY" | "ADD") && words.any(|w| w.starts_with("<<")) {
            return Err(DockerfileError::Unsupported {
                line: i + 1,
                instruction: format!("{first} <<heredoc"),
                hint: "write the script or file into the app and COPY it, or use RUN with \\ \
                       continuations"
                    .into(),
            });
        }
    }
    Ok(())
}

/// The parser's error with its line (from pest's `--> line:col`).
fn syntax_error(text: &str, e: &dp::Error) -> DockerfileError {
    let message = e.to_string();
    let line: usize = message
        .split("--> ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1);
    let what = text
        .lines()
        .nth(line.saturating_sub(1))
        .unwrap_or_default()
        .trim();
    DockerfileError::Syntax {
        line,
        reason: format!("cannot parse `{what}`"),
    }
}

/// The raw text of a value the crate may have unquoted: its source if it was quoted, else the
/// text with line continuations removed.
fn breakable_raw(text: &str, value: &dp::BreakableString) -> String {
    let source = text
        .get(value.span.start..value.span.end)
        .unwrap_or_default();
    if source.starts_with(['"', '\'']) {
        source.to_string()
    } else {
        value.to_string()
    }
}

fn command(expr: &dp::ShellOrExecExpr) -> Command {
    match expr {
        dp::ShellOrExecExpr::Shell(s) => Command::Shell(s.to_string().trim().to_string()),
        dp::ShellOrExecExpr::Exec(a) => {
            Command::Exec(a.elements.iter().map(|e| e.content.clone()).collect())
        }
    }
}

/// `ADD [flags] src... dest` (or the JSON form), from the raw argument text.
fn add(args: &str, line: usize) -> Result<Copy, DockerfileError> {
    let mut c = Copy {
        add: true,
        from: None,
        chown: None,
        chmod: None,
        sources: Vec::new(),
        dest: String::new(),
    };
    let mut rest = args.trim();
    while let Some(flag) = rest.strip_prefix("--") {
        let end = flag.find(char::is_whitespace).unwrap_or(flag.len());
        let (name, value) = flag[..end].split_once('=').unwrap_or((&flag[..end], ""));
        match name {
            "chown" => c.chown = Some(value.to_string()),
            "chmod" => c.chmod = Some(value.to_string()),
            other => {
                return Err(DockerfileError::Unsupported {
                    line,
                    instruction: format!("ADD --{other}"),
                    hint: COPY_FLAGS.into(),
                })
            }
        }
        rest = flag[end..].trim_start();
    }
    let paths = if rest.starts_with('[') {
        json_array(rest).map_err(|reason| DockerfileError::Syntax { line, reason })?
    } else {
        rest.split_whitespace().map(str::to_string).collect()
    };
    set_paths(&mut c, paths, line)?;
    // http(s) URLs are downloaded at build time, where the egress rules are checked.
    if let Some(url) = c.sources.iter().find(|s| is_url(s)) {
        let lower = url.to_ascii_lowercase();
        let hint = if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            "ADD downloads http URLs only (when the staging egress rules allow them); clone \
             repositories in a RUN"
        } else if c.sources.len() > 1 {
            "a URL must be the only source of its ADD; write one ADD per URL"
        } else {
            return Ok(c);
        };
        return Err(DockerfileError::Unsupported {
            line,
            instruction: format!("ADD {url}"),
            hint: hint.into(),
        });
    }
    Ok(c)
}

pub(crate) fn is_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    ["http://", "https://", "git@", "git://", "ssh://"]
        .iter()
        .any(|p| lower.starts_with(p))
}

fn set_paths(c: &mut Copy, mut paths: Vec<String>, line: usize) -> Result<(), DockerfileError> {
    let what = if c.add { "ADD" } else { "COPY" };
    let Some(dest) = paths.pop().filter(|_| !paths.is_empty()) else {
        return Err(DockerfileError::Syntax {
            line,
            reason: format!("{what} needs at least one source and a destination"),
        });
    };
    if !c.add {
        if let Some(url) = paths.iter().find(|s| is_url(s)) {
            return Err(DockerfileError::Syntax {
                line,
                reason: format!("COPY cannot copy from a URL ({url}); only from the app's files"),
            });
        }
    }
    c.dest = dest;
    c.sources = paths;
    Ok(())
}

/// A JSON array of strings; each element is re-quoted so that word processing keeps it whole.
fn json_array(json: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> =
        serde_json::from_str(json.trim()).map_err(|e| format!("bad JSON array {json}: {e}"))?;
    Ok(items
        .into_iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect())
}

/// An instruction's source on one line: continuations joined, runs of blanks squeezed.
fn one_line(raw: &str) -> String {
    raw.replace("\\\r\n", " ")
        .replace("\\\n", " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn stages_steps_and_lines() {
        let text = "ARG BASE=tiny\n\
                    FROM ${BASE} AS build\n\
                    # a comment\n\
                    ARG GREETING=hello\n\
                    ENV A=1 B=\"two words\"\n\
                    RUN echo $GREETING \\\n    && echo done\n\
                    WORKDIR /app\n\
                    COPY --chown=vcap:vcap src/ /app/\n\
                    \n\
                    FROM tiny\n\
                    COPY --from=build /app/out /srv/out\n\
                    ADD [\"a b.txt\", \"/srv/\"]\n\
                    USER vcap\n\
                    EXPOSE 8080/tcp\n\
                    LABEL org.example=\"x y\"\n\
                    CMD [\"/bin/httpd\", \"-f\"]\n\
                    ENTRYPOINT /bin/sh\n";
        let d = parse(text).unwrap();
        assert_eq!(
            d.global_args,
            vec![Arg {
                name: "BASE".into(),
                default: Some("tiny".into())
            }]
        );
        assert_eq!(d.stages.len(), 2);
        let build = &d.stages[0];
        assert_eq!(
            (build.from.as_str(), build.name.as_deref(), build.line),
            ("${BASE}", Some("build"), 2)
        );
        let lines: Vec<usize> = build.steps.iter().map(|s| s.line).collect();
        assert_eq!(lines, [4, 5, 6, 8, 9]);
        assert_eq!(
            build.steps[1].instruction,
            Instruction::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "\"two words\"".into())
            ])
        );
        assert_eq!(
            build.steps[2].instruction,
            Instruction::Run(Command::Shell("echo $GREETING     && echo done".into()))
        );
        assert_eq!(build.steps[2].text, "RUN echo $GREETING && echo done");
        let Instruction::Copy(copy) = &build.steps[4].instruction else {
            panic!("a COPY")
        };
        assert_eq!(copy.chown.as_deref(), Some("vcap:vcap"));
        assert_eq!(
            (copy.sources.as_slice(), copy.dest.as_str()),
            (&["src/".to_string()][..], "/app/")
        );

        let run = &d.stages[1];
        assert_eq!(run.line, 11);
        let Instruction::Copy(copy) = &run.steps[0].instruction else {
            panic!("a COPY")
        };
        assert_eq!(copy.from.as_deref(), Some("build"));
        let Instruction::Copy(add) = &run.steps[1].instruction else {
            panic!("an ADD")
        };
        assert!(add.add);
        assert_eq!(add.sources, ["\"a b.txt\""]);
        assert_eq!(run.steps[2].instruction, Instruction::User("vcap".into()));
        assert_eq!(
            run.steps[3].instruction,
            Instruction::Expose("8080/tcp".into())
        );
        assert_eq!(
            run.steps[4].instruction,
            Instruction::Label(vec![("org.example".into(), "\"x y\"".into())])
        );
        assert_eq!(
            run.steps[5].instruction,
            Instruction::Cmd(Command::Exec(vec!["/bin/httpd".into(), "-f".into()]))
        );
        assert_eq!(
            run.steps[6].instruction,
            Instruction::Entrypoint(Command::Shell("/bin/sh".into()))
        );
    }

    #[test]
    fn unsupported_instructions_name_their_line() {
        let base = "FROM tiny\nRUN true\n";
        for (ins, name) in [
            ("HEALTHCHECK CMD true", "HEALTHCHECK"),
            ("ONBUILD RUN true", "ONBUILD"),
            ("VOLUME /data", "VOLUME"),
            ("SHELL [\"/bin/bash\", \"-c\"]", "SHELL"),
            ("STOPSIGNAL SIGINT", "STOPSIGNAL"),
            (
                "ADD git@github.com:example/x.git /x",
                "ADD git@github.com:example/x.git",
            ),
            (
                "ADD http://example.com/a http://example.com/b /x/",
                "ADD http://example.com/a",
            ),
            ("COPY --link a /a", "COPY --link"),
            ("COPY --parents=true a /a", "COPY --parents"),
            ("RUN --mount=type=cache,target=/x true", "RUN --mount"),
            ("RUN --network=none true", "RUN --network"),
            ("ADD --checksum=sha256:00 a /a", "ADD --checksum"),
        ] {
            let e = err(&format!("{base}{ins}\n"));
            assert!(
                e.starts_with(&format!("line 3: {name} is not supported by Kiln")),
                "{ins}: {e}"
            );
        }
        let e = err("FROM tiny\nRUN <<EOF\necho hi\nEOF\n");
        assert!(
            e.starts_with("line 2: RUN <<heredoc is not supported by Kiln"),
            "{e}"
        );
        let e = err("FROM --platform=linux/arm64 tiny\n");
        assert!(
            e.starts_with("line 1: FROM --platform is not supported"),
            "{e}"
        );
    }

    #[test]
    fn bad_dockerfiles_are_refused_with_a_line() {
        assert_eq!(
            err("RUN true\n"),
            "line 1: RUN before the first FROM: only ARG may come before FROM"
        );
        assert_eq!(
            err("# nothing\n"),
            "line 1: the Dockerfile has no FROM instruction"
        );
        assert!(
            err("FROM tiny\nFROBNICATE x\n").starts_with("line 2: unknown instruction FROBNICATE")
        );
        assert!(err("FROM tiny\nCOPY onlyone\n").starts_with("line 2:"));
        assert!(err("FROM tiny\nCOPY http://x/y /y\n")
            .starts_with("line 2: COPY cannot copy from a URL"));
        assert!(err("FROM tiny\nCOPY https://x/y /y\n")
            .starts_with("line 2: COPY cannot copy from a URL"));
    }

    #[test]
    fn add_of_an_http_url_is_parsed_for_the_build_to_download() {
        let d = parse(
            "FROM tiny\nADD --chmod=644 https://example.com/tool.tgz /opt/\n\
             ADD http://example.com/x /x\n",
        )
        .unwrap();
        let Instruction::Copy(add) = &d.stages[0].steps[0].instruction else {
            panic!("an ADD")
        };
        assert!(add.add);
        assert_eq!(add.sources, ["https://example.com/tool.tgz"]);
        assert_eq!(
            (add.dest.as_str(), add.chmod.as_deref()),
            ("/opt/", Some("644"))
        );
        assert_eq!(d.stages[0].steps[1].line, 3);
    }
}
