//! Moving bits between the stager and the controller's internal endpoints: the package and the
//! previous cache down, the droplet and the new cache up. Bodies are streamed between the
//! network and files, so memory stays bounded whatever their size. Every request carries the
//! internal credential as `Authorization: Bearer <token>`; it lives only in this process and is
//! never handed to a staging container.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::error::{ServiceError, TransferError};

/// The internal credential. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A token from its text (surrounding whitespace removed).
    pub fn new(text: &str) -> Token {
        Token(text.trim().to_string())
    }

    /// Reads the token from `path` (one line; surrounding whitespace removed).
    pub fn from_file(path: &Path) -> Result<Token, ServiceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServiceError::Token {
            path: path.to_path_buf(),
            source,
        })?;
        let token = Token::new(&text);
        if token.0.is_empty() {
            return Err(ServiceError::EmptyToken(path.to_path_buf()));
        }
        Ok(token)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// An HTTP client for the controller's internal endpoints.
#[derive(Debug, Clone)]
pub(crate) struct Transfers {
    client: reqwest::Client,
    token: Option<Token>,
}

/// How long connecting may take, and how long a transfer may stall between two reads.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Transfers {
    pub(crate) fn new(token: Option<Token>) -> Result<Transfers, ServiceError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(STALL_TIMEOUT)
            // The endpoints are internal: never through a proxy from the environment.
            .no_proxy()
            .build()
            .map_err(ServiceError::HttpClient)?;
        Ok(Transfers { client, token })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(Token(token)) => request.bearer_auth(token),
            None => request,
        }
    }

    /// GETs `url` into the new file `to`, refusing bodies over `limit` bytes. `Ok(false)` when
    /// `missing_ok` and the server answers 404.
    pub(crate) async fn download(
        &self,
        url: &str,
        to: &Path,
        limit: u64,
        missing_ok: bool,
    ) -> Result<bool, TransferError> {
        Ok(self.fetch(url, to, limit, missing_ok).await?.is_some())
    }

    /// GETs `url` into the new file `to` like [`Transfers::download`] (404 is an error) and
    /// returns the hex sha256 of what it wrote, hashed as it streamed.
    pub(crate) async fn download_hashed(
        &self,
        url: &str,
        to: &Path,
        limit: u64,
    ) -> Result<String, TransferError> {
        self.fetch(url, to, limit, false)
            .await?
            .ok_or(TransferError::Status(StatusCode::NOT_FOUND))
    }

    /// The download: `None` when `missing_ok` and the server answers 404, else the sha256 of
    /// the body written.
    async fn fetch(
        &self,
        url: &str,
        to: &Path,
        limit: u64,
        missing_ok: bool,
    ) -> Result<Option<String>, TransferError> {
        let url = parse(url)?;
        let response = self
            .authorized(self.client.get(url))
            .send()
            .await
            .map_err(TransferError::http)?;
        let status = response.status();
        if missing_ok && status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(TransferError::Status(status));
        }
        let too_large = TransferError::TooLarge {
            limit_mib: limit >> 20,
        };
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large);
        }
        let mut file = tokio::fs::File::create(to)
            .await
            .map_err(TransferError::io("creating", to))?;
        let mut body = response.bytes_stream();
        let mut written = 0u64;
        let mut hash = Sha256::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(TransferError::http)?;
            written += chunk.len() as u64;
            if written > limit {
                return Err(too_large);
            }
            hash.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(TransferError::io("writing", to))?;
        }
        file.flush()
            .await
            .map_err(TransferError::io("writing", to))?;
        Ok(Some(hex::encode(hash.finalize())))
    }

    /// PUTs the file `from` to `url` as `application/gzip`, streamed.
    pub(crate) async fn upload(&self, from: &Path, url: &str) -> Result<(), TransferError> {
        self.upload_as(from, url, "application/gzip").await
    }

    /// PUTs the file `from` to `url` as `content_type`, streamed.
    pub(crate) async fn upload_as(
        &self,
        from: &Path,
        url: &str,
        content_type: &str,
    ) -> Result<(), TransferError> {
        let url = parse(url)?;
        let file = tokio::fs::File::open(from)
            .await
            .map_err(TransferError::io("opening", from))?;
        let size = file
            .metadata()
            .await
            .map_err(TransferError::io("reading the size of", from))?
            .len();
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 << 10));
        let response = self
            .authorized(self.client.put(url))
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, size)
            .body(body)
            .send()
            .await
            .map_err(TransferError::http)?;
        let status = response.status();
        if !status.is_success() {
            return Err(TransferError::Status(status));
        }
        Ok(())
    }
}

fn parse(url: &str) -> Result<Url, TransferError> {
    match Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(u),
        _ => Err(TransferError::InvalidUrl(shown_url(url))),
    }
}

/// `url` as failure messages show it: without credentials or query (signed URLs keep their
/// secrets there), cut to 200 characters.
pub(crate) fn shown_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url.chars().take(200).collect(),
    }
}

/// Where a build's files live: a fresh temp dir, removed when dropped.
pub(crate) struct WorkDir {
    dir: tempfile::TempDir,
}

impl WorkDir {
    pub(crate) fn new(parent: &Path) -> std::io::Result<WorkDir> {
        Ok(WorkDir {
            dir: tempfile::Builder::new()
                .prefix("kiln-build-")
                .tempdir_in(parent)?,
        })
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_secrets() {
        assert_eq!(
            shown_url("http://user:pw@cc.internal:9022/packages/x?signature=abc#f"),
            "http://cc.internal:9022/packages/x"
        );
        assert_eq!(shown_url("not a url"), "not a url");
    }

    #[test]
    fn only_http_urls_are_fetched() {
        assert!(parse("http://cc/packages/x").is_ok());
        assert!(parse("https://cc/packages/x").is_ok());
        let err = parse("file:///etc/shadow").unwrap_err().to_string();
        assert_eq!(err, "`file:///etc/shadow` is not an http or https URL");
    }

    #[test]
    fn tokens_are_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let token = Token::from_file(&path).unwrap();
        assert_eq!(token.0, "s3cret");
        assert_eq!(format!("{token:?}"), "Token(..)");
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(
            Token::from_file(&path),
            Err(ServiceError::EmptyToken(_))
        ));
        assert!(matches!(
            Token::from_file(&dir.path().join("none")),
            Err(ServiceError::Token { .. })
        ));
    }
}
