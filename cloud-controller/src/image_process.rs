//! How an image droplet's instances run, read from the image's config as the image store
//! recorded it (`{user, env, working_dir, entrypoint, cmd, exposed_ports}`, see
//! `api::images`): the argv (`ENTRYPOINT` + `CMD`, or the process's own command through
//! `/bin/sh -c`), the user, the directory and the port the app listens on.

use kiln_bus::cell::ImageProcess;
use serde_json::Value;

/// The port of an image that exposes none (Cloud Foundry's default `PORT`).
pub const DEFAULT_PORT: u16 = 8080;

/// The instance process of an image whose config is `config`; `command` (the process's own,
/// from `-c` or a manifest) replaces the image's `ENTRYPOINT` and `CMD`. Err: why it cannot
/// run (the image names no command and the process has none).
pub fn process(config: &Value, command: Option<&str>) -> Result<ImageProcess, String> {
    let argv = match command.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => vec!["/bin/sh".to_string(), "-c".to_string(), c.to_string()],
        None => image_argv(config),
    };
    if argv.is_empty() {
        return Err(
            "the image has no ENTRYPOINT or CMD: give the app a start command (kiln push -c)"
                .to_string(),
        );
    }
    Ok(ImageProcess {
        command: argv,
        user: text(config, "user"),
        working_dir: text(config, "working_dir"),
        env: strings(config, "env"),
        port: port(config),
    })
}

/// `ENTRYPOINT` + `CMD` as one line for people (what `kiln app` shows as the command).
pub fn display(config: &Value) -> String {
    image_argv(config)
        .iter()
        .map(|a| quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first exposed TCP port (`8080/tcp`, or a bare `8080`), else [`DEFAULT_PORT`].
pub fn port(config: &Value) -> u16 {
    let ports = match &config["exposed_ports"] {
        Value::Array(ports) => ports.iter().filter_map(Value::as_str).collect::<Vec<_>>(),
        // Docker's own form: {"8080/tcp": {}}.
        Value::Object(ports) => ports.keys().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    let mut tcp: Vec<u16> = ports
        .iter()
        .filter_map(|p| match p.split_once('/') {
            Some((n, proto)) if proto.eq_ignore_ascii_case("tcp") => n.parse().ok(),
            Some(_) => None,
            None => p.parse().ok(),
        })
        .filter(|p| *p != 0)
        .collect();
    tcp.sort_unstable();
    tcp.first().copied().unwrap_or(DEFAULT_PORT)
}

fn image_argv(config: &Value) -> Vec<String> {
    let mut argv = strings(config, "entrypoint");
    argv.extend(strings(config, "cmd"));
    argv
}

fn strings(config: &Value, key: &str) -> Vec<String> {
    match &config[key] {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn text(config: &Value, key: &str) -> String {
    config[key].as_str().unwrap_or_default().to_string()
}

/// `arg` as a POSIX shell word.
fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_image_command_runs_unless_the_process_has_one() {
        let config = json!({"user": "vcap", "working_dir": "/srv", "env": ["PATH=/bin"],
            "entrypoint": ["httpd", "-f"], "cmd": ["-p", "0.0.0.0:8080"], "exposed_ports": ["8080/tcp"]});
        let p = process(&config, None).unwrap();
        assert_eq!(p.command, ["httpd", "-f", "-p", "0.0.0.0:8080"]);
        assert_eq!((p.user.as_str(), p.working_dir.as_str()), ("vcap", "/srv"));
        assert_eq!(p.env, ["PATH=/bin"]);
        let own = process(&config, Some("echo $PORT")).unwrap();
        assert_eq!(own.command, ["/bin/sh", "-c", "echo $PORT"]);
        assert_eq!(display(&config), "httpd -f -p 0.0.0.0:8080");
    }

    #[test]
    fn an_image_without_a_command_says_what_to_do() {
        let err = process(&json!({"cmd": null}), Some("  ")).unwrap_err();
        assert!(err.contains("kiln push -c"), "{err}");
    }

    #[test]
    fn the_port_is_the_lowest_exposed_tcp_port() {
        assert_eq!(
            port(&json!({"exposed_ports": ["9000/udp", "5000/tcp", "3000"]})),
            3000
        );
        assert_eq!(port(&json!({"exposed_ports": {"7000/tcp": {}}})), 7000);
        assert_eq!(port(&json!({"exposed_ports": []})), DEFAULT_PORT);
        assert_eq!(port(&json!({})), DEFAULT_PORT);
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let config = json!({"cmd": ["sh", "-c", "echo 'hi' $X"]});
        assert_eq!(display(&config), r#"sh -c 'echo '\''hi'\'' $X'"#);
    }
}
