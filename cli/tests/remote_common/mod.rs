//! A real controller (with its own `nats-server`) for the `kiln` binary to talk to, with the
//! CLI's home in a temp dir.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

/// A controller and a CLI home.
pub struct Platform {
    /// The API URL.
    pub url: String,
    /// The admin's password.
    pub password: String,
    /// Temp dir: `cc/` (controller data), `home/` (KILN_HOME), apps.
    pub dir: tempfile::TempDir,
    /// The bus.
    pub nats: kiln_testkit::Nats,
    cc: kiln_cloud_controller::Started,
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.cc.server.abort();
    }
}

/// The result of a `kiln` run.
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panics unless it exited 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "kiln failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics unless it failed.
    #[track_caller]
    pub fn failed(self) -> Run {
        assert_ne!(
            self.code, 0,
            "kiln should have failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

impl Platform {
    /// Starts NATS and a controller with `tiny` as its default stack.
    pub async fn start() -> Platform {
        let nats = kiln_testkit::Nats::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = kiln_cloud_controller::Config::new(dir.path().join("cc"));
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.nats_url = nats.url.clone();
        config.default_stack = "tiny".into();
        config.converge_settle_ms = 100;
        let cc = kiln_cloud_controller::start(config)
            .await
            .expect("controller starts");
        let password = std::fs::read_to_string(dir.path().join("cc/admin-password"))
            .expect("admin password")
            .trim()
            .to_string();
        Platform {
            url: format!("http://{}", cc.addr),
            password,
            dir,
            nats,
            cc,
        }
    }

    /// The CLI's home.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Runs `kiln args...` in `cwd` with the test's home.
    pub async fn kiln_in(&self, cwd: &Path, args: &[&str]) -> Run {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .current_dir(cwd)
            .env("KILN_HOME", self.home())
            .env("NO_COLOR", "1")
            .env_remove("KILN_PASSWORD")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run kiln");
        Run::from(out)
    }

    /// Runs `kiln args...` in the temp dir.
    pub async fn kiln(&self, args: &[&str]) -> Run {
        self.kiln_in(self.dir.path(), args).await
    }

    /// Logs in as admin.
    pub async fn login(&self) {
        self.kiln(&[
            "login",
            "-a",
            &self.url,
            "-u",
            "admin",
            "-p",
            &self.password,
        ])
        .await
        .ok();
    }

    /// Writes `files` (path, content) under `dir` (relative to the temp dir); its path.
    pub fn app_dir(&self, dir: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = self.dir.path().join(dir);
        for (p, c) in files {
            let f = root.join(p);
            std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
            std::fs::write(&f, c).expect("write");
        }
        root
    }

    /// A plain HTTP GET with the saved token; the body's bytes.
    pub async fn get_bytes(&self, path: &str) -> Vec<u8> {
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.home().join("config.json")).expect("config"),
        )
        .expect("config JSON");
        let token = config["access_token"].as_str().expect("token");
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.bytes().await.expect("body").to_vec()
    }

    /// GET as JSON.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        serde_json::from_slice(&self.get_bytes(path).await).expect("JSON")
    }
}

/// The entry names of a zip.
pub fn zip_names(bytes: &[u8]) -> Vec<String> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    let mut names: Vec<String> = (0..z.len())
        .map(|i| z.by_index(i).expect("entry").name().to_string())
        .collect();
    names.sort();
    names
}
