//! Users and tokens: passwords hashed with argon2; bearer tokens are claims signed with
//! HMAC-SHA256 under a key kept in the data dir (so tokens survive a restart), access tokens
//! short-lived and refresh tokens longer; the admin user is made on first start with a
//! generated password written to a 0600 file and printed once.

use std::path::Path;

use crate::db::Db;
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ApiError;
use crate::state::AppState;

/// Lifetime of an access token.
pub const ACCESS_TTL_SECS: i64 = 3600;
/// Lifetime of a refresh token.
pub const REFRESH_TTL_SECS: i64 = 30 * 24 * 3600;

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user's guid.
    pub sub: String,
    /// The user's name.
    pub user_name: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// `access` or `refresh`.
    pub kind: String,
}

/// Signs and checks tokens.
#[derive(Clone)]
pub struct TokenKey {
    key: Vec<u8>,
}

impl TokenKey {
    /// The key in `path`, made (32 random bytes, mode 0600) if missing.
    pub fn load_or_create(path: &Path) -> std::io::Result<TokenKey> {
        match std::fs::read(path) {
            Ok(key) if key.len() >= 32 => Ok(TokenKey { key }),
            _ => {
                let mut key = vec![0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                write_private(path, &key)?;
                Ok(TokenKey { key })
            }
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// A signed token for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        format!(
            "{body}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// The claims of a token whose signature and expiry are valid, of the given `kind`.
    pub fn verify(&self, token: &str, kind: &str) -> Result<Claims, ApiError> {
        let invalid = |why: &str| ApiError::InvalidAuthToken(why.to_string());
        let (body, sig) = token
            .split_once('.')
            .ok_or_else(|| invalid("malformed token"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| invalid("malformed token"))?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| invalid("bad signature"))?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid("malformed token"))?;
        if claims.kind != kind {
            return Err(invalid("wrong kind of token"));
        }
        if claims.exp <= chrono::Utc::now().timestamp() {
            return Err(invalid("the token has expired"));
        }
        Ok(claims)
    }
}

/// Writes `content` to `path` readable by its owner only, whole or not at all (a temp file
/// renamed into place).
pub fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// An argon2 hash of `password`.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal("hashing a password", e))
}

/// Whether `password` matches `hash`.
pub fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Checks `password` against `hash`, or against a throw-away hash when there is no such user
/// so that the answer takes as long either way, off the async threads.
pub async fn check_password(password: String, hash: Option<String>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| hash_password("not a password").unwrap_or_default())
                .clone()
        });
        password_matches(&password, &hash) && known
    })
    .await
    .unwrap_or(false)
}

/// Creates the `admin` user on first start; returns its generated password then (else None).
pub async fn ensure_admin(db: &Db, data_dir: &Path) -> anyhow::Result<Option<String>> {
    let exists: Option<(String,)> =
        sqlx::query_as("SELECT guid FROM users WHERE username = 'admin'")
            .fetch_optional(db)
            .await?;
    if exists.is_some() {
        return Ok(None);
    }
    let mut raw = [0u8; 18];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let password = URL_SAFE_NO_PAD.encode(raw);
    let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_private(
        &data_dir.join("admin-password"),
        format!("{password}\n").as_bytes(),
    )?;
    sqlx::query(
        "INSERT INTO users (guid, username, password_hash, created_at) VALUES ($1, 'admin', $2, $3)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(hash)
    .bind(crate::state::now())
    .execute(db)
    .await?;
    Ok(Some(password))
}

/// The authenticated user of a request (`Authorization: bearer <access token>`).
#[derive(Debug, Clone)]
pub struct User {
    /// The user's guid.
    pub guid: String,
    /// The user's name.
    pub name: String,
}

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or(ApiError::NotAuthenticated)?
            .to_str()
            .map_err(|_| ApiError::InvalidAuthToken("malformed header".into()))?;
        let token = header
            .strip_prefix("bearer ")
            .or_else(|| header.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::InvalidAuthToken("expected `bearer <token>`".into()))?;
        let claims = state.tokens.verify(token.trim(), "access")?;
        Ok(User {
            guid: claims.sub,
            name: claims.user_name,
        })
    }
}

/// A stager or cell, holding the internal credential (`Authorization: Bearer <internal>`).
pub struct Internal;

impl FromRequestParts<AppState> for Internal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(ApiError::NotAuthenticated)?;
        if constant_time_eq(given.trim().as_bytes(), state.internal_token.as_bytes()) {
            Ok(Internal)
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_signed_typed_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::load_or_create(&dir.path().join("key")).unwrap();
        let claims = |kind: &str, exp: i64| Claims {
            sub: "u".into(),
            user_name: "admin".into(),
            exp,
            kind: kind.into(),
        };
        let later = chrono::Utc::now().timestamp() + 60;
        let token = key.sign(&claims("access", later));
        assert_eq!(key.verify(&token, "access").unwrap().sub, "u");
        assert!(key.verify(&token, "refresh").is_err());
        assert!(key
            .verify(&key.sign(&claims("access", 1)), "access")
            .unwrap_err()
            .to_string()
            .contains("expired"));
        let other = TokenKey::load_or_create(&dir.path().join("other")).unwrap();
        assert!(other
            .verify(&token, "access")
            .unwrap_err()
            .to_string()
            .contains("bad signature"));
        assert!(key.verify("garbage", "access").is_err());
        let again = TokenKey::load_or_create(&dir.path().join("key")).unwrap();
        assert!(
            again.verify(&token, "access").is_ok(),
            "the key survives a restart"
        );
        assert!(password_matches("pw", &hash_password("pw").unwrap()));
        assert!(!password_matches("nope", &hash_password("pw").unwrap()));
    }
}
