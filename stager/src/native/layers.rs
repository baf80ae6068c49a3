//! The layers a Cloud Native Buildpack left in its layers dir, turned into droplet content:
//! `launch` layers stay and their `bin/`, `lib/`, `env/` and `env.launch/` become a
//! `profile.d` script; `build` layers give later buildpacks of the group their `bin/`, `lib/`,
//! `env/` and `env.build/`; `cache` layers are saved to the cache (without their `[types]`,
//! which a restored layer must declare again); layers without a `<layer>.toml` are dropped;
//! `launch.toml` processes become process types.

use std::collections::{BTreeMap, BTreeSet};

use kiln_droplet::PROFILE_DIR;
use serde::Deserialize;

use crate::buildpack::Buildpack;
use crate::error::{Phase, StagingError};
use crate::session::{file_tar, Output, Session, Step};

/// The layers dir's metadata files, env files, layer directories, and which have `bin/`/`lib/`.
#[derive(Default)]
pub(crate) struct LayerFiles {
    files: BTreeMap<String, String>,
    dirs: BTreeSet<String>,
    layers: BTreeSet<String>,
}

const LIST_LAYERS: &str = r#"cd "$1" || exit 0
emit() { printf 'F%s\000' "$1"; cat "$1"; printf '\000'; }
for f in *.toml; do [ -f "$f" ] && emit "$f"; done
for l in */; do
  l=${l%/}
  [ -d "$l" ] || continue
  printf 'L%s\000\000' "$l"
  for e in env env.launch env.build; do for f in "$l/$e"/*; do [ -f "$f" ] && emit "$f"; done; done
  for d in bin lib; do [ -d "$l/$d" ] && printf 'D%s\000\000' "$l/$d"; done
done
exit 0"#;

pub(crate) fn parse_listing(text: &str) -> LayerFiles {
    let mut out = LayerFiles::default();
    let mut parts = text.split('\0');
    while let (Some(name), Some(content)) = (parts.next(), parts.next()) {
        if let Some(path) = name.strip_prefix('F') {
            out.files.insert(path.to_string(), content.to_string());
        } else if let Some(path) = name.strip_prefix('D') {
            out.dirs.insert(path.to_string());
        } else if let Some(path) = name.strip_prefix('L') {
            out.layers.insert(path.to_string());
        }
    }
    out
}

#[derive(Deserialize, Default)]
struct LayerToml {
    #[serde(default)]
    types: Option<LayerTypes>,
    #[serde(default)]
    launch: bool,
    #[serde(default)]
    build: bool,
    #[serde(default)]
    cache: bool,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct LayerTypes {
    #[serde(default)]
    launch: bool,
    #[serde(default)]
    build: bool,
    #[serde(default)]
    cache: bool,
}

#[derive(Deserialize, Default)]
struct LaunchToml {
    #[serde(default)]
    processes: Vec<LaunchProcess>,
}

#[derive(Deserialize)]
struct LaunchProcess {
    #[serde(rename = "type")]
    kind: String,
    command: Command,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    default: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Command {
    Shell(String),
    Argv(Vec<String>),
}

/// What one buildpack's layers gave.
#[derive(Default)]
pub(crate) struct Exported {
    /// Process types from `launch.toml`.
    pub process_types: BTreeMap<String, String>,
    /// `sh` lines that give later buildpacks its build layers.
    pub build_env: String,
    /// Paths to remove from the droplet once every buildpack has built.
    pub drop: Vec<String>,
}

/// Exports the layers of buildpack `idx` (in `layers`), saving cache layers under `cache`.
pub(crate) async fn export(
    session: &Session<'_>,
    bp: &Buildpack,
    idx: usize,
    layers: &str,
    cache: &str,
) -> Result<Exported, StagingError> {
    let violated = |reason: String| StagingError::ContractViolated {
        phase: Phase::Release,
        buildpack: bp.name.clone(),
        reason,
    };
    let listing = session
        .sh(Step::new(Phase::Release, &bp.name, "vcap", LIST_LAYERS)
            .args(&[layers])
            .output(Output::Quiet))
        .await?;
    let found = parse_listing(&listing.stdout);
    let mut exported = Exported::default();
    let mut cached: Vec<(String, String)> = Vec::new();
    let mut profile = String::new();
    for layer in &found.layers {
        let path = format!("{layers}/{layer}");
        let Some(text) = found.files.get(&format!("{layer}.toml")) else {
            session.warn(format!(
                "       layer {layer} has no {layer}.toml: left out of the droplet"
            ));
            exported.drop.push(path);
            continue;
        };
        let meta: LayerToml = toml::from_str(text)
            .map_err(|e| violated(format!("wrote an invalid {layer}.toml: {}", e.message())))?;
        let types = meta.types.unwrap_or(LayerTypes {
            launch: meta.launch,
            build: meta.build,
            cache: meta.cache,
        });
        if types.cache {
            cached.push((layer.clone(), without_types(text)));
        }
        if types.build {
            exported
                .build_env
                .push_str(&layer_profile(&found, layers, layer, "env.build"));
        }
        if types.launch {
            profile.push_str(&layer_profile(&found, layers, layer, "env.launch"));
        } else {
            exported.drop.push(format!("{path}.toml"));
            exported.drop.push(path);
        }
    }
    save_cache(session, bp, layers, cache, &cached).await?;
    if !profile.is_empty() {
        let name = format!("{idx}_cnb.sh");
        session
            .put(
                Phase::Release,
                PROFILE_DIR,
                "vcap",
                std::io::Cursor::new(file_tar(&[(&name, profile.as_bytes(), 0o644)])),
            )
            .await?;
    }
    if let Some(text) = found.files.get("launch.toml") {
        let launch: LaunchToml = toml::from_str(text)
            .map_err(|e| violated(format!("wrote an invalid launch.toml: {}", e.message())))?;
        exported.process_types = process_types(launch);
    }
    Ok(exported)
}

/// Replaces the buildpack's saved cache with its `cache` layers of this build.
async fn save_cache(
    session: &Session<'_>,
    bp: &Buildpack,
    layers: &str,
    cache: &str,
    cached: &[(String, String)],
) -> Result<(), StagingError> {
    let mut script = format!("set -e\nrm -rf {c}\nmkdir -p {c}\n", c = sh_quote(cache));
    for (layer, _) in cached {
        script.push_str(&format!(
            "cp -a {p} {c}/\n",
            p = sh_quote(&format!("{layers}/{layer}")),
            c = sh_quote(cache)
        ));
    }
    let out = session
        .sh(Step::new(Phase::Release, &bp.name, "vcap", &script))
        .await?;
    out.or_violation(Phase::Release, &bp.name, "cache layers could not be saved")?;
    if cached.is_empty() {
        return Ok(());
    }
    let tomls: Vec<(String, String)> = cached
        .iter()
        .map(|(l, t)| (format!("{l}.toml"), t.clone()))
        .collect();
    let entries: Vec<(&str, &[u8], u32)> = tomls
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_bytes(), 0o644))
        .collect();
    session
        .put(
            Phase::Release,
            cache,
            "vcap",
            std::io::Cursor::new(file_tar(&entries)),
        )
        .await?;
    let names: Vec<&str> = cached.iter().map(|(l, _)| l.as_str()).collect();
    session.say(format!("       cached layers: {}", names.join(", ")));
    Ok(())
}

/// A `<layer>.toml` without its types: a restored layer is declared again or left out.
fn without_types(text: &str) -> String {
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return String::new();
    };
    for key in ["types", "launch", "build", "cache"] {
        table.remove(key);
    }
    toml::to_string(&table).unwrap_or_default()
}

fn process_types(launch: LaunchToml) -> BTreeMap<String, String> {
    let mut types = BTreeMap::new();
    for p in launch.processes {
        let mut argv = match p.command {
            Command::Shell(s) => vec![s],
            Command::Argv(v) => v.iter().map(|a| sh_quote(a)).collect(),
        };
        argv.extend(p.args.iter().map(|a| sh_quote(a)));
        let command = argv.join(" ");
        if p.default && !types.contains_key("web") {
            types.insert("web".to_string(), command.clone());
        }
        types.insert(p.kind, command);
    }
    types
}

/// The `sh` lines of one layer: `bin/` on PATH, `lib/` on LD_LIBRARY_PATH, its `env/` files
/// and then those of `phase_env` (`env.launch` or `env.build`). Files with a suffix other than
/// override, default, append, prepend (and delim) are not part of the contract and are skipped.
fn layer_profile(found: &LayerFiles, layers: &str, layer: &str, phase_env: &str) -> String {
    let mut out = String::new();
    let base = format!("{layers}/{layer}");
    if found.dirs.contains(&format!("{layer}/bin")) {
        out.push_str(&format!(
            "export PATH={}\"${{PATH:+:$PATH}}\"\n",
            sh_quote(&format!("{base}/bin"))
        ));
    }
    if found.dirs.contains(&format!("{layer}/lib")) {
        out.push_str(&format!(
            "export LD_LIBRARY_PATH={}\"${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\"\n",
            sh_quote(&format!("{base}/lib"))
        ));
    }
    for dir in ["env", phase_env] {
        let prefix = format!("{layer}/{dir}/");
        for (file, value) in found.files.range(prefix.clone()..) {
            let Some(name) = file.strip_prefix(&prefix) else {
                break;
            };
            let (var, action) = name.rsplit_once('.').unwrap_or((name, "override"));
            if !is_identifier(var) {
                continue;
            }
            let delim = found
                .files
                .get(&format!("{prefix}{var}.delim"))
                .map(String::as_str)
                .unwrap_or("");
            let v = sh_quote(value);
            let d = sh_quote(delim);
            out.push_str(&match action {
                "override" => format!("export {var}={v}\n"),
                "default" => format!("if [ -z \"${{{var}+x}}\" ]; then export {var}={v}; fi\n"),
                "append" => format!("if [ -n \"${{{var}:-}}\" ]; then export {var}=\"${var}\"{d}{v}; else export {var}={v}; fi\n"),
                "prepend" => format!("if [ -n \"${{{var}:-}}\" ]; then export {var}={v}{d}\"${var}\"; else export {var}={v}; fi\n"),
                _ => continue,
            });
        }
    }
    out
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Quotes `s` for POSIX sh.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_env_files_become_profile_lines_that_sh_understands() {
        let mut found = LayerFiles::default();
        found.dirs.insert("py/bin".into());
        for (k, v) in [
            ("py/env/A", "over'ride"),
            ("py/env/B.default", "dflt"),
            ("py/env/C.append", "tail"),
            ("py/env/C.delim", ":"),
            ("py/env.launch/D.prepend", "head"),
            ("py/env.launch/D.delim", ","),
            ("py/env.build/E", "build-only"),
            ("py/env/F.weird", "skipped"),
            ("py/env/bad-name", "x"),
        ] {
            found.files.insert(k.into(), v.into());
        }
        let script = layer_profile(&found, "/L", "py", "env.launch");
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("B=set; C=c0; D=d0; PATH=/bin\n{script}\necho \"$A|$B|$C|$D|${{E-}}|${{F-}}|$PATH\"")])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "over'ride|set|c0:tail|head,d0|||/L/py/bin:/bin"
        );
        assert!(layer_profile(&found, "/L", "py", "env.build").contains("export E='build-only'"));
    }

    #[test]
    fn listings_parse_and_restored_layers_lose_their_types() {
        let found = parse_listing("Fa.toml\0[types]\nlaunch = true\n\0La\0\0Da/bin\0\0");
        assert_eq!(found.files["a.toml"], "[types]\nlaunch = true\n");
        assert!(found.dirs.contains("a/bin") && found.layers.contains("a"));
        let kept =
            without_types("[types]\nlaunch = true\ncache = true\n[metadata]\nversion = \"1\"\n");
        assert!(
            !kept.contains("types") && kept.contains("version = \"1\""),
            "{kept}"
        );
    }
}
