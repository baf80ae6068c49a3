//! The CLI's saved state, `~/.kiln/config.json` (`KILN_HOME` overrides `~/.kiln`): the API it
//! targets, the tokens of the logged-in user and the targeted org and space. The folder is
//! 0700 and the file 0600, since it holds tokens.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Errors reading or writing the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No home folder to keep the config in.
    #[error("no home folder: set HOME or KILN_HOME")]
    NoHome,
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a config.
    #[error("{path} is damaged ({source}): run `kiln login` again")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// A named resource the CLI targets (an org or a space).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Named {
    /// Its guid.
    pub guid: String,
    /// Its name.
    pub name: String,
}

/// What the CLI remembers between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    /// The API's root URL, without a trailing `/`.
    pub api: Option<String>,
    /// The token issuer (the root's `links.login`), for refreshing.
    pub login: Option<String>,
    /// The user logged in.
    pub user: Option<String>,
    /// The bearer token for API calls.
    pub access_token: Option<String>,
    /// The token that gets a new access token when it expires.
    pub refresh_token: Option<String>,
    /// When the access token expires, seconds since the epoch.
    pub expires_at: Option<u64>,
    /// The targeted organization.
    pub org: Option<Named>,
    /// The targeted space.
    pub space: Option<Named>,
}

/// The CLI's folder: `$KILN_HOME`, else `~/.kiln`.
pub fn home() -> Result<PathBuf, ConfigError> {
    if let Some(h) = std::env::var_os("KILN_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".kiln"))
        .ok_or(ConfigError::NoHome)
}

impl Config {
    /// The config file's path.
    pub fn path() -> Result<PathBuf, ConfigError> {
        Ok(home()?.join("config.json"))
    }

    /// The saved config, or an empty one when there is none yet.
    pub fn load() -> Result<Config, ConfigError> {
        let path = Config::path()?;
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse {
                path: path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Io { path, source }),
        }
    }

    /// Writes the config atomically: a 0600 temp file in the 0700 folder, renamed into place.
    pub fn save(&self) -> Result<(), ConfigError> {
        let dir = home()?;
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| ConfigError::Io { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        let path = dir.join("config.json");
        let tmp = dir.join(".config.json.tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(&body).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_with_private_modes_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("k");
        // SAFETY-free: tests in this module are the only ones touching KILN_HOME.
        std::env::set_var("KILN_HOME", &home);
        let c = Config {
            api: Some("http://x".into()),
            user: Some("admin".into()),
            ..Config::default()
        };
        c.save().unwrap();
        let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home), 0o700);
        assert_eq!(mode(&home.join("config.json")), 0o600);
        assert_eq!(Config::load().unwrap().user.as_deref(), Some("admin"));
    }
}
