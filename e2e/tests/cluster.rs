//! `deploy/cluster up` and `deploy/cluster down` for real (as root): a multi-host platform on
//! this machine, each host a network namespace on a bridge (NATS, PostgreSQL, the controller,
//! two stagers, three cells in zones z1, z1 and z2, the router), with a cluster of the test's
//! own: its data dir, network `10.78.0.0/24` (container pools `10.78.1-5.0/24`) on bridge
//! `kilnct`, namespaces `kct-*`, container ports from 63201 and uids from 0x68000000, so it
//! cannot clash with a developer's cluster (`10.77.0.0/24`, `kilnc0`, `kc-*`) or with other
//! tests. The `kiln` CLI pushes `examples/staticfile` on tiny and scales it to three
//! instances, which land on cells of both zones and answer through the router's address from
//! this machine; then the user's journey of `kiln_e2e::suite` runs against it (tiny only);
//! a second `up` leaves everything running; `down` leaves no process,
//! container, mount, cgroup, namespace, interface or iptables rule behind, and `--purge`
//! removes the data dir. Whatever fails, the cluster is taken down when the test ends.
//!
//! The binaries are those of `KILN_BIN_DIR`, else of the target dir this test was built into
//! (built there if missing). `deploy/setup` is not run (`KILN_SKIP_SETUP=1`; the tiny stack is
//! in the machine's stack cache).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_e2e::deployed::{alive, bin_dir, comm, repo};
use serde_json::Value;

const NET: &str = "10.78.0";
const BRIDGE: &str = "kilnct";
const PREFIX: &str = "kct-";
const DOMAIN: &str = "apps.kiln.internal";
/// Host, last number of its address, binary.
const HOSTS: [(&str, u8, &str); 9] = [
    ("nats", 2, "nats-server"),
    ("db", 3, "postgres"),
    ("cc", 4, "kiln-cc"),
    ("stager1", 5, "kiln-stager"),
    ("stager2", 6, "kiln-stager"),
    ("cell1", 7, "kiln-executor"),
    ("cell2", 8, "kiln-executor"),
    ("cell3", 9, "kiln-executor"),
    ("router", 10, "kiln-router"),
];
const ZONES: [(&str, &str); 3] = [("cell1", "z1"), ("cell2", "z1"), ("cell3", "z2")];

fn addr(host: &str) -> String {
    let octet = HOSTS
        .iter()
        .find(|(h, _, _)| *h == host)
        .map(|(_, o, _)| *o)
        .expect("a host of the cluster");
    format!("{NET}.{octet}")
}

/// The test's cluster: `deploy/cluster down --purge` runs when it is dropped, unless the test
/// did it.
struct Cluster {
    data: PathBuf,
    home: PathBuf,
    bins: PathBuf,
    env: Vec<(String, String)>,
    down: bool,
}

impl Cluster {
    fn new(dir: &Path, bins: &Path) -> Cluster {
        let data = dir.join("cluster");
        let home = dir.join("home");
        let env = [
            ("KILN_CLUSTER_DATA", data.display().to_string()),
            ("KILN_HOME", home.display().to_string()),
            ("KILN_BIN_DIR", bins.display().to_string()),
            ("KILN_SKIP_SETUP", "1".into()),
            ("KILN_CLUSTER_SUBNET", format!("{NET}.0/24")),
            ("KILN_CLUSTER_BRIDGE", BRIDGE.into()),
            ("KILN_CLUSTER_NS_PREFIX", PREFIX.into()),
            ("KILN_CLUSTER_PORT_BASE", "63200".into()),
            ("KILN_CLUSTER_UIDS", (0x6800_0000u32).to_string()),
            ("KILN_CLUSTER_STACKS", "tiny".into()),
            ("KILN_CLUSTER_APPS_DOMAIN", DOMAIN.into()),
            ("KILN_CLUSTER_CELL_MEMORY_MB", "4096".into()),
            ("KILN_CLUSTER_CELL_DISK_MB", "16384".into()),
            ("KILN_CLUSTER_CELL_MAX_CONTAINERS", "12".into()),
            ("KILN_START_TIMEOUT", "180".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Cluster {
            data,
            home,
            bins: bins.to_path_buf(),
            env,
            down: false,
        }
    }

    /// Runs `deploy/cluster args...` with the test's settings only; prints its output.
    fn script(&self, args: &[&str]) -> Output {
        let mut c = Command::new(repo().join("deploy/cluster"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KILN_") && k != "KILN_LOG" {
                c.env_remove(k);
            }
        }
        let out = c
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running deploy/cluster: {e}"));
        eprintln!(
            "--- deploy/cluster {} ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs the `kiln` CLI, logged in by `up`, in the repository; prints its output.
    fn kiln(&self, args: &[&str]) -> Output {
        let out = Command::new(self.bins.join("kiln"))
            .args(args)
            .env("KILN_HOME", &self.home)
            .env("NO_COLOR", "1")
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running kiln: {e}"));
        eprintln!(
            "--- kiln {} ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The pid of each host's component, from its pid file.
    fn pids(&self) -> BTreeMap<&'static str, u32> {
        HOSTS
            .iter()
            .filter_map(|(host, _, _)| {
                let text =
                    std::fs::read_to_string(self.data.join(format!("run/{host}.pid"))).ok()?;
                Some((*host, text.trim().parse().ok()?))
            })
            .collect()
    }

    /// The container backends' data dirs.
    fn backends(&self) -> Vec<PathBuf> {
        let mut dirs = vec![
            self.data.join("stager1/backend"),
            self.data.join("stager2/backend"),
        ];
        for (cell, _) in ZONES {
            dirs.push(self.data.join(cell).join("executor/containers"));
        }
        dirs
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.down && self.data.exists() {
            let out = self.script(&["down", "--purge"]);
            if !out.status.success() {
                eprintln!("deploy/cluster down after the failure failed: clean up by hand");
            }
        }
    }
}

/// Whether `pid` runs (a zombie does not).
fn run(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Everything of the cluster still on the machine.
fn leftovers(cluster: &Cluster, pids: &BTreeMap<&str, u32>) -> Vec<String> {
    let data = &cluster.data;
    let mut left = Vec::new();
    for (host, pid) in pids {
        if alive(*pid) {
            left.push(format!("{host} (pid {pid})"));
        }
    }
    // Processes working in the data dir.
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(data))
            && alive(pid)
        {
            left.push(format!("process {pid} ({})", comm(pid)));
        }
    }
    for ns in run("ip", &["netns", "list"]).lines() {
        if ns.starts_with(PREFIX) {
            left.push(format!("namespace {ns}"));
        }
    }
    for link in run("ip", &["-o", "link", "show"]).lines() {
        if link.contains(BRIDGE) {
            left.push(format!("interface {link}"));
        }
    }
    for table in ["filter", "nat"] {
        for rule in run("iptables-save", &["-t", table]).lines() {
            // The hosts' network and the container pools (10.78.0-5.0/24).
            if rule.contains(&format!("kiln-cluster-{BRIDGE}")) || rule.contains(" 10.78.") {
                left.push(format!("iptables ({table}) {rule}"));
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let mountpoint = line.split(' ').nth(4).unwrap_or_default();
        if Path::new(mountpoint).starts_with(data) {
            left.push(format!("mount {mountpoint}"));
        }
    }
    let data_text = data.display().to_string();
    for line in run("losetup", &["-a"]).lines() {
        if line.contains(&data_text) {
            left.push(format!("loop device {line}"));
        }
    }
    for backend in cluster.backends() {
        let runc = backend.join("runc");
        if runc.exists() {
            let out = Command::new("runc")
                .arg("--root")
                .arg(&runc)
                .args(["list", "-q"])
                .output()
                .expect("runc list");
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                left.push(format!("container {id} ({})", backend.display()));
            }
        }
        let tag = kiln_containers::backend::backend_tag(&backend);
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let cgroup = hierarchy.path().join("kiln").join(&tag);
            if cgroup.exists() {
                left.push(format!("cgroup {}", cgroup.display()));
            }
        }
    }
    left
}

/// A GET with the admin's token; the JSON body.
async fn get(http: &reqwest::Client, token: &str, path: &str) -> Value {
    let url = format!("http://{}:9022{path}", addr("cc"));
    match http.get(&url).bearer_auth(token).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// The app's three instances run on cells of both zones and answer through the router's
/// address; each cell answers for its own instance (the router reaches `<cell address>:<port>`).
async fn instances_spread_and_answer(cluster: &Cluster, app: &str) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let api = format!("http://{}:9022", addr("cc"));
    let password = std::fs::read_to_string(cluster.data.join("cc/admin-password"))
        .map_err(|e| format!("the admin password: {e}"))?;
    let tokens: Value = http
        .post(format!("{api}/oauth/token"))
        .basic_auth("cf", Some(""))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", password.trim()),
        ])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let token = tokens["access_token"]
        .as_str()
        .ok_or(format!("no token for admin: {tokens}"))?
        .to_string();
    let apps = get(&http, &token, &format!("/v3/apps?names={app}")).await;
    let app_guid = apps["resources"][0]["guid"]
        .as_str()
        .ok_or(format!("no app {app}: {apps}"))?
        .to_string();
    let web = get(&http, &token, &format!("/v3/apps/{app_guid}/processes/web")).await;
    let process = web["guid"]
        .as_str()
        .ok_or(format!("no web process: {web}"))?;

    // Three RUNNING instances, on the cells' addresses.
    let deadline = Instant::now() + Duration::from_secs(120);
    let hosts: Vec<String> = loop {
        let stats = get(&http, &token, &format!("/v3/processes/{process}/stats")).await;
        let running: Vec<String> = stats["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["state"] == "RUNNING")
            .filter_map(|r| r["host"].as_str().map(str::to_string))
            .collect();
        if running.len() == 3 {
            break running;
        }
        if Instant::now() > deadline {
            return Err(format!("not 3 running instances after 120 s: {stats}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let zone_of_host: BTreeMap<String, &str> = ZONES
        .iter()
        .map(|(cell, zone)| (addr(cell), *zone))
        .collect();
    let zones: BTreeSet<&str> = hosts
        .iter()
        .map(|h| {
            zone_of_host
                .get(h)
                .copied()
                .ok_or(format!("instance on {h}, not a cell's address"))
        })
        .collect::<Result<_, _>>()?;
    if zones != BTreeSet::from(["z1", "z2"]) {
        return Err(format!(
            "instances on {hosts:?}: zones {zones:?}, not z1 and z2"
        ));
    }
    // The controller's view of the cells agrees.
    let cells = get(&http, &token, "/v3/cells").await;
    let mut per_zone: BTreeMap<String, u64> = BTreeMap::new();
    for cell in cells["resources"].as_array().into_iter().flatten() {
        let n = cell["instances_per_app"][&app_guid].as_u64().unwrap_or(0);
        *per_zone
            .entry(cell["zone"].as_str().unwrap_or("?").to_string())
            .or_default() += n;
    }
    if per_zone.values().sum::<u64>() != 3 || per_zone.get("z2").copied().unwrap_or(0) == 0 {
        return Err(format!(
            "GET /v3/cells: instances per zone {per_zone:?}: {cells}"
        ));
    }

    // Through the router's address, from this machine (over the bridge), by the app's route.
    let router = format!("http://{}/", addr("router"));
    for _ in 0..6 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = http
                .get(&router)
                .header("host", format!("{app}.{DOMAIN}"))
                .send()
                .await;
            let (status, body) = match r {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            };
            if status == 200 && body.contains("Kiln staticfile example") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "GET {router} (Host {app}.{DOMAIN}): {status} {body}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(())
}

#[test]
fn deploy_cluster_runs_a_multi_host_platform_and_down_leaves_nothing() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "deploy/cluster needs root (namespaces, containers)"
    );
    let bins = bin_dir();
    let dir = tempfile::tempdir().unwrap();
    // Containers (mapped uids) traverse the data dir's parents.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let mut cluster = Cluster::new(dir.path(), &bins);

    // Up: every host's component runs, in its namespace, healthy.
    let up = cluster.script(&["up"]);
    assert!(up.status.success(), "deploy/cluster up failed");
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(stdout.contains("The Kiln cluster is up"), "{stdout}");
    assert!(
        stdout.contains(&format!("http://{}:9022", addr("cc"))),
        "{stdout}"
    );
    let pids = cluster.pids();
    assert_eq!(pids.len(), HOSTS.len(), "pid files: {pids:?}");
    for (host, _, binary) in HOSTS {
        let pid = pids[host];
        assert!(alive(pid), "{host} (pid {pid}) does not run");
        assert_eq!(comm(pid), binary, "pid {pid} of {host}");
        let ns = std::fs::metadata(format!("/run/netns/{PREFIX}{host}"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or_else(|e| panic!("namespace {PREFIX}{host}: {e}"));
        let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        assert_eq!(
            link.to_string_lossy(),
            format!("net:[{ns}]"),
            "{host} is not in its namespace"
        );
    }
    // They know each other by address only, the controller's database is PostgreSQL.
    for entry in std::fs::read_dir(cluster.data.join("etc")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            !text.contains("127.0.0.1") && !text.contains("localhost"),
            "{}: {text}",
            path.display()
        );
    }
    let cc_env = std::fs::read_to_string(cluster.data.join("etc/cc.env")).unwrap();
    assert!(
        cc_env.contains(&format!("@{}:5432/kiln", addr("db"))),
        "{cc_env}"
    );
    for (cell, zone) in ZONES {
        let config = kiln_executor::Config::from_toml(
            &std::fs::read_to_string(cluster.data.join(format!("etc/{cell}.toml"))).unwrap(),
        )
        .expect("the executor config deploy/cluster wrote parses");
        config.validate().expect("a valid executor config");
        assert_eq!(config.zone, zone);
        assert_eq!(config.host_ip, addr(cell));
    }
    let status = cluster.script(&["status"]);
    assert!(status.status.success(), "deploy/cluster status");
    let lines = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        lines.lines().filter(|l| l.contains("running (pid")).count(),
        HOSTS.len(),
        "{lines}"
    );

    // Push with the CLI (logged in by up), scale to three.
    let push = cluster.kiln(&[
        "push",
        "hello",
        "-p",
        "examples/staticfile",
        "--stack",
        "tiny",
    ]);
    assert!(push.status.success(), "kiln push failed");
    let scale = cluster.kiln(&["scale", "hello", "-i", "3"]);
    assert!(scale.status.success(), "kiln scale failed");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(instances_spread_and_answer(&cluster, "hello"))
        .unwrap_or_else(|e| panic!("{e}"));

    // The user's journey with the CLI, across the hosts.
    let scratch = tempfile::tempdir().unwrap();
    let target = kiln_e2e::suite::Target {
        kiln: cluster.bins.join("kiln"),
        home: cluster.home.clone(),
        router: format!("{}:80", addr("router")),
        domain: DOMAIN.into(),
        stacks: vec!["tiny".into()],
        max_upload_mb: None,
        scratch: scratch.path().to_path_buf(),
    };
    rt.block_on(kiln_e2e::suite::run(&target))
        .unwrap_or_else(|e| panic!("the CLI suite against deploy/cluster: {e}"));
    drop(rt);

    // Up again: nothing restarts.
    let again = cluster.script(&["up"]);
    assert!(
        again.status.success(),
        "the second deploy/cluster up failed"
    );
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert_eq!(
        stdout.matches(": already running (pid").count(),
        HOSTS.len(),
        "{stdout}"
    );
    assert_eq!(cluster.pids(), pids, "the second up restarted something");

    // Down: nothing left, the app's containers included; --purge removes the data dir.
    let down = cluster.script(&["down"]);
    assert!(down.status.success(), "deploy/cluster down failed");
    let left = leftovers(&cluster, &pids);
    assert!(left.is_empty(), "left behind: {left:#?}");
    let purge = cluster.script(&["down", "--purge"]);
    assert!(purge.status.success(), "deploy/cluster down --purge failed");
    assert!(!cluster.data.exists(), "the data dir is still there");
    cluster.down = true;
}
