//! The bookworm stack, taken from the machine's stack cache (`recipes::cached`, so it is built
//! once per machine: the first run needs root, Debian's archive and a few minutes), imported
//! into a store in a temporary directory and checked on the unpacked tree, partly by running
//! its own binaries in it with `chroot`.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_rootfs::layout::read_image;
use kiln_rootfs::recipes::{self, LABEL_NAME, LABEL_PACKAGES, LABEL_RECIPE_VERSION};
use kiln_rootfs::{StackImage, StackStore};

struct Imported {
    _tmp: tempfile::TempDir,
    image: StackImage,
    layout: PathBuf,
}

fn imported() -> Imported {
    let layout = recipes::cached("bookworm").expect("the bookworm stack builds (as root)");
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = StackStore::open(tmp.path().join("store")).expect("open store");
    let image = store.import(&layout.dir, "bookworm").expect("import");
    assert_eq!(image.digest, layout.manifest_digest);
    Imported {
        _tmp: tmp,
        image,
        layout: layout.dir,
    }
}

/// Runs `args` in the tree with `chroot`, with a clean environment.
fn chroot(rootfs: &Path, args: &[&str]) -> Output {
    Command::new("chroot")
        .arg(rootfs)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("LANG", "C.UTF-8")
        .env("HOME", "/root")
        .output()
        .expect("run chroot")
}

fn stdout_of(rootfs: &Path, args: &[&str]) -> String {
    let out = chroot(rootfs, args);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bookworm_has_the_promised_userland_users_and_labels() {
    let Imported {
        _tmp,
        image,
        layout,
    } = imported();
    let r = &image.rootfs;
    let meta = |p: &str| fs::metadata(r.join(p)).unwrap_or_else(|e| panic!("/{p}: {e}"));

    for bin in [
        "usr/bin/python3",
        "usr/bin/pip3",
        "usr/bin/node",
        "usr/bin/npm",
        "bin/bash",
        "bin/busybox",
    ] {
        assert!(meta(bin).is_file(), "/{bin}");
        assert_ne!(
            meta(bin).permissions().mode() & 0o111,
            0,
            "/{bin} executable"
        );
    }

    let passwd = fs::read_to_string(r.join("etc/passwd")).expect("passwd");
    let vcap = passwd
        .lines()
        .find(|l| l.starts_with("vcap:x:2000:2000:"))
        .unwrap_or_else(|| panic!("no vcap:x:2000:2000 in\n{passwd}"));
    assert!(vcap.ends_with(":/home/vcap:/bin/bash"), "{vcap}");
    let group = fs::read_to_string(r.join("etc/group")).expect("group");
    assert!(
        group.lines().any(|l| l.starts_with("vcap:x:2000:")),
        "{group}"
    );
    let home = meta("home/vcap");
    assert_eq!((home.uid(), home.gid()), (2000, 2000));
    assert_eq!(home.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        fs::metadata(r.join("home/vcap/.bashrc"))
            .expect(".bashrc from /etc/skel")
            .uid(),
        2000
    );

    // Set-id bits, group ownership and hard links came through the layer.
    let su = fs::symlink_metadata(r.join("usr/bin/su")).expect("su");
    assert_eq!((su.uid(), su.permissions().mode() & 0o7777), (0, 0o4755));
    let shadow_gid = group
        .lines()
        .find_map(|l| l.strip_prefix("shadow:x:"))
        .and_then(|rest| rest.split(':').next())
        .and_then(|g| g.parse::<u32>().ok())
        .expect("a shadow group");
    let shadow = fs::symlink_metadata(r.join("etc/shadow")).expect("shadow");
    assert_eq!(
        (shadow.gid(), shadow.permissions().mode() & 0o7777),
        (shadow_gid, 0o640)
    );
    let perl = fs::symlink_metadata(r.join("usr/bin/perl")).expect("perl");
    let versioned = fs::read_dir(r.join("usr/bin"))
        .expect("usr/bin")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("perl5."))
        .expect("usr/bin/perl5.*");
    assert_eq!(
        versioned.metadata().expect("stat").ino(),
        perl.ino(),
        "perl and {:?} are one file",
        versioned.file_name()
    );
    assert_eq!(
        fs::read_link(r.join("bin")).expect("merged /usr"),
        Path::new("usr/bin")
    );

    // Slimmed: no .debs, lists, man pages; documentation down to copyrights; no devices.
    let archives: Vec<_> = fs::read_dir(r.join("var/cache/apt/archives"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".deb"))
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(archives.is_empty(), "{archives:?}");
    let entries = |p: &str| {
        fs::read_dir(r.join(p))
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_else(|_| Vec::new())
    };
    assert!(entries("var/lib/apt/lists").is_empty());
    assert!(entries("usr/share/man").is_empty());
    assert!(entries("dev").is_empty(), "{:?}", entries("dev"));
    assert_eq!(entries("usr/share/doc/bash"), ["copyright"]);
    assert_eq!(
        fs::read_to_string(r.join("etc/resolv.conf")).expect("resolv.conf"),
        ""
    );

    // The image config: env, user, labels.
    assert!(
        image.env.iter().any(|e| e == "LANG=C.UTF-8"),
        "{:?}",
        image.env
    );
    assert!(
        image.env.iter().any(|e| e.starts_with("PATH=")),
        "{:?}",
        image.env
    );
    assert_eq!(image.user.as_deref(), Some("vcap"));
    assert_eq!(image.working_dir.as_deref(), Some("/home/vcap"));
    let config = read_image(&layout, "bookworm").expect("read layout").config;
    let labels = config
        .config()
        .as_ref()
        .and_then(|c| c.labels().clone())
        .expect("labels");
    assert_eq!(labels.get(LABEL_NAME).map(String::as_str), Some("bookworm"));
    assert!(labels.contains_key(LABEL_RECIPE_VERSION));
    let packages: Vec<&str> = labels
        .get(LABEL_PACKAGES)
        .expect("packages")
        .lines()
        .collect();
    for wanted in [
        "python3=",
        "python3-pip=",
        "python3-venv=",
        "nodejs=",
        "npm=",
        "busybox=",
        "bash=",
        "ca-certificates=",
        "tzdata=",
        "locales=",
    ] {
        assert!(
            packages.iter().any(|p| p.starts_with(wanted)),
            "no {wanted} in the package label"
        );
    }
    let mut sorted = packages.clone();
    sorted.sort_unstable();
    assert_eq!(packages, sorted, "the package list is sorted");
}

#[test]
fn bookworm_userland_runs_python_node_pip_and_busybox_httpd() {
    let Imported { _tmp, image, .. } = imported();
    let r = &image.rootfs;

    assert_eq!(
        stdout_of(r, &["/usr/bin/python3", "-c", "import ssl, venv; print(1)"]).trim(),
        "1"
    );
    assert_eq!(
        stdout_of(r, &["/usr/bin/node", "-e", "console.log(1)"]).trim(),
        "1"
    );
    let pip = stdout_of(r, &["su", "vcap", "-s", "/bin/sh", "-c", "pip3 --version"]);
    assert!(pip.starts_with("pip "), "{pip}");
    let npm = stdout_of(r, &["su", "vcap", "-c", "cd && npm --version"]);
    assert!(
        npm.trim().starts_with(|c: char| c.is_ascii_digit()),
        "{npm}"
    );
    let locales = stdout_of(r, &["locale", "-a"]);
    for l in ["C.utf8", "en_US.utf8"] {
        assert!(locales.lines().any(|x| x == l), "{l} in {locales}");
    }

    // busybox httpd serves a file on loopback.
    let applets = stdout_of(r, &["busybox", "--list"]);
    assert!(applets.lines().any(|a| a == "httpd"), "{applets}");
    let www = r.join("tmp/www");
    fs::create_dir_all(&www).expect("mkdir www");
    fs::write(www.join("index.html"), b"hello from bookworm\n").expect("write index");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut httpd = Command::new("chroot")
        .arg(r)
        .args(["busybox", "httpd", "-f", "-h", "/tmp/www", "-p"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .spawn()
        .expect("start busybox httpd");
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut conn) => {
                conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                    .expect("send request");
                let mut response = String::new();
                conn.read_to_string(&mut response).expect("read response");
                break response;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                let _ = httpd.kill();
                panic!("busybox httpd did not listen: {e}");
            }
        }
    };
    let _ = httpd.kill();
    let _ = httpd.wait();
    assert!(
        response.starts_with("HTTP/1.") && response.contains(" 200 "),
        "{response}"
    );
    assert!(response.contains("hello from bookworm"), "{response}");
}

#[test]
fn concurrent_cached_calls_return_the_same_layout() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| recipes::cached("bookworm"));
        let b = s.spawn(|| recipes::cached("bookworm"));
        (
            a.join().expect("thread a").expect("cached a"),
            b.join().expect("thread b").expect("cached b"),
        )
    });
    assert_eq!(a, b);
    assert!(a.dir.starts_with(recipes::cache_root()));
    assert!(a.dir.join("index.json").is_file());
}
