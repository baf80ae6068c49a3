//! A real controller per test: its own data dir, its own `nats-server` on a free loopback
//! port (killed on drop), listening on a free loopback port; and an HTTP client logged in as
//! admin.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

pub use kiln_testkit::Nats;

/// The database a test's controller uses.
#[derive(Debug, Clone, Copy)]
pub enum Db {
    /// SQLite in the data dir (the default).
    Sqlite,
    /// A fresh database on the test process's PostgreSQL server.
    Postgres,
}

/// Defines, for each named `async fn(Db)`, a test against SQLite (`sqlite::<name>`) and one
/// against PostgreSQL (`postgres::<name>`).
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::common::Db::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::common::Db::Postgres).await
            })*
        }
    };
}

/// A running controller and an admin client.
pub struct Controller {
    pub url: String,
    pub data_dir: PathBuf,
    pub token: String,
    pub http: reqwest::Client,
    pub nats: Nats,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Controller {
    pub async fn start(db: Db) -> Controller {
        Self::start_with(db, |_| {}).await
    }

    pub async fn start_with(
        db: Db,
        tune: impl FnOnce(&mut kiln_cloud_controller::Config),
    ) -> Controller {
        let nats = Nats::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = kiln_cloud_controller::Config::new(dir.path().join("cc"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.nats_url = nats.url.clone();
        config.default_stack = "tiny".into();
        if let Db::Postgres = db {
            config.database_url = Some(kiln_testkit::postgres_database());
        }
        tune(&mut config);
        let data_dir = config.data_dir.clone();
        let started = kiln_cloud_controller::start(config)
            .await
            .expect("controller starts");
        let password = started
            .admin_password
            .clone()
            .expect("first start makes an admin");
        let on_disk = std::fs::read_to_string(data_dir.join("admin-password")).unwrap();
        assert_eq!(on_disk.trim(), password);
        let url = format!("http://{}", started.addr);
        let http = reqwest::Client::new();
        let token = login(&http, &url, "admin", &password).await["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        Controller {
            url,
            data_dir,
            token,
            http,
            nats,
            server: started.server,
            _dir: dir,
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    /// `(status, body as JSON or Null)`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        send(r).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// The default space's guid.
    pub async fn space(&self) -> String {
        let (_, spaces) = self.get("/v3/spaces").await;
        spaces["resources"][0]["guid"].as_str().unwrap().to_string()
    }

    /// Creates app `name` in the default space; returns its guid.
    pub async fn app(&self, name: &str) -> String {
        let space = self.space().await;
        let (status, app) = self
            .post("/v3/apps", serde_json::json!({"name": name, "relationships": {"space": {"data": {"guid": space}}}}))
            .await;
        assert_eq!(status, 201, "{app}");
        app["guid"].as_str().unwrap().to_string()
    }

    /// Creates a bits package for `app` and uploads `bits`; returns (status, package JSON).
    pub async fn upload(&self, app: &str, bits: Vec<u8>) -> (u16, Value) {
        let (status, package) = self
            .post("/v3/packages", serde_json::json!({"type": "bits", "relationships": {"app": {"data": {"guid": app}}}}))
            .await;
        assert_eq!(status, 201, "{package}");
        let guid = package["guid"].as_str().unwrap();
        let form = reqwest::multipart::Form::new()
            .text("resources", "[]")
            .part(
                "bits",
                reqwest::multipart::Part::bytes(bits).file_name("app.zip"),
            );
        send(
            self.req(
                reqwest::Method::POST,
                &format!("/v3/packages/{guid}/upload"),
            )
            .multipart(form),
        )
        .await
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub async fn login(http: &reqwest::Client, url: &str, user: &str, password: &str) -> Value {
    let (status, body) = send(
        http.post(format!("{url}/oauth/token"))
            .basic_auth("cf", Some(""))
            .form(&[
                ("grant_type", "password"),
                ("username", user),
                ("password", password),
            ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The title of the first error of a V3 error body.
pub fn error_title(body: &Value) -> &str {
    body["errors"][0]["title"]
        .as_str()
        .unwrap_or("(no V3 error body)")
}

/// A zip of `files`.
pub fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, body) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(body.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

impl Controller {
    /// Creates a bits package for `app` and uploads `form`; returns (status, package JSON).
    pub async fn upload_form(&self, app: &str, form: reqwest::multipart::Form) -> (u16, Value) {
        let (status, package) = self
            .post("/v3/packages", serde_json::json!({"type": "bits", "relationships": {"app": {"data": {"guid": app}}}}))
            .await;
        assert_eq!(status, 201, "{package}");
        let guid = package["guid"].as_str().unwrap();
        send(
            self.req(
                reqwest::Method::POST,
                &format!("/v3/packages/{guid}/upload"),
            )
            .multipart(form),
        )
        .await
    }

    /// The bytes of `path` (a download), with a 200.
    pub async fn download(&self, path: &str) -> Vec<u8> {
        let resp = self.req(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        resp.bytes().await.unwrap().to_vec()
    }
}

/// A zip of `files` with their unix permission bits.
pub fn zip_with_modes(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, body, mode) in files {
        let options = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*name, options).unwrap();
        w.write_all(body).unwrap();
    }
    w.finish().unwrap().into_inner()
}
