//! The built `kiln` as a user runs it in the end-to-end tests: logged in as admin to a
//! [`Platform`], its own home, no colors, no stdin.

use std::path::{Path, PathBuf};

use crate::platform::Platform;

/// The built `kiln`, logged in as admin with a home of its own.
pub struct Kiln {
    binary: PathBuf,
    home: PathBuf,
}

impl Kiln {
    /// Logs the built `kiln` in to `p` as admin, with its home in `dir`.
    pub async fn login(dir: &Path, p: &Platform) -> Result<Kiln, String> {
        let kiln = Kiln {
            binary: crate::platform::kiln_binary()?,
            home: dir.join("kiln-home"),
        };
        let password =
            std::fs::read_to_string(dir.join("cc/admin-password")).map_err(|e| e.to_string())?;
        kiln.run(&[
            "login",
            "-a",
            &p.cc_url,
            "-u",
            "admin",
            "-p",
            password.trim(),
        ])
        .await?;
        Ok(kiln)
    }

    /// Runs `kiln args`: its stdout and stderr on success, else both in the error.
    pub async fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = tokio::process::Command::new(&self.binary)
            .args(args)
            .env("KILN_HOME", &self.home)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("running kiln: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("kiln {} ({}): {text}", args.join(" "), out.status))
        }
    }
}
