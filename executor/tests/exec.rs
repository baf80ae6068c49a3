//! Commands run in an instance's container on request (`kiln.cell.<id>.exec`; test index 65:
//! pool 10.244.65.0/26, ports 41300-41319), on real runc and NATS: the app's user, directory
//! and environment, stdout and stderr apart, the exit code, a CELL line; refusals (an instance
//! the cell does not have, no command, no such program); a command killed at its timeout with
//! what it wrote so far; output over the limit cut to fit the bus; a long command holding up
//! neither a short one nor the cell.
mod common;

use std::time::{Duration, Instant};

use common::cell::{exec, Cell};
use common::*;
use kiln_bus::cell;

const WEB: &str = "exec httpd -f -p $PORT -h /home/vcap/app";

#[test]
fn commands_run_in_the_instance_and_report_output_exit_and_timeout() {
    let mut c = Cell::new(65);
    let tgz = droplet(&[("index.html", "hello\n")], WEB);
    let sha = sha256(&tgz);
    let url = c.droplets.add("d1", tgz);
    let wait = Duration::from_secs(30);
    c.block_on(async {
        c.send(
            cell::start_subject(&c.config.cell_id),
            &start("app1", "inst-1", &url, &sha, WEB),
        )
        .await;
        let (_, running) = c.bus.state("inst-1", "RUNNING", wait).await;
        let port = running["port"].as_u64().expect("port") as u16;

        // As the app runs: its env, user and directory; stdout and stderr apart; the code.
        let script = "echo $PORT; id -u; pwd; echo $GREETING; echo err >&2; exit 3";
        let r = exec(&c, "inst-1", &["sh", "-c", script], 10).await;
        assert_eq!(r.exit_code, Some(3), "{r:?}");
        assert_eq!(r.stdout, "8080\n2000\n/home/vcap/app\nhi\n", "{r:?}");
        assert_eq!(r.stderr, "err\n", "{r:?}");
        assert!(r.error.is_none() && !r.truncated && !r.timed_out, "{r:?}");
        // A CELL line says what ran; the output is the caller's only.
        let (_, line) = c
            .bus
            .wait(wait, "the CELL line of the command", |s, v| {
                s == cell::app_log("app1")
                    && v["source"] == "CELL"
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("Running command in instance 0: "))
            })
            .await;
        assert_eq!(
            line["message"],
            format!("Running command in instance 0: sh -c '{script}'")
        );
        assert!(c.bus.log("app1", "APP/PROC/WEB/0").is_empty());

        // An argv runs through no shell.
        let r = exec(&c, "inst-1", &["echo", "$PORT", "a b"], 0).await;
        assert_eq!((r.exit_code, r.stdout.as_str()), (Some(0), "$PORT a b\n"));

        // Refusals say why, with no exit code.
        let r = exec(&c, "no-such-instance", &["true"], 5).await;
        assert_eq!(r.exit_code, None);
        assert_eq!(
            r.error.as_deref(),
            Some("instance no-such-instance is not running on cell cell-65")
        );
        let r = exec(&c, "inst-1", &[], 5).await;
        assert_eq!(r.error.as_deref(), Some("no command given"));
        let r = exec(&c, "inst-1", &["no-such-program"], 5).await;
        assert_eq!(r.exit_code, None);
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.starts_with("starting \"no-such-program\"")),
            "{r:?}"
        );

        // Past its timeout it is killed, with what it wrote so far; meanwhile a short
        // command answers at once and the instance keeps serving.
        let before = Instant::now();
        let slow = exec(
            &c,
            "inst-1",
            &["sh", "-c", "echo before; sleep 30; echo after"],
            2,
        );
        let quick = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = exec(&c, "inst-1", &["sh", "-c", "echo quick"], 5).await;
            (r, before.elapsed())
        };
        let (slow, (quick, quick_at)) = tokio::join!(slow, quick);
        assert_eq!(quick.stdout, "quick\n", "{quick:?}");
        assert!(quick_at < Duration::from_secs(2), "{quick_at:?}");
        let took = before.elapsed();
        assert!(slow.timed_out, "{slow:?}");
        assert_eq!(slow.exit_code, None);
        assert_eq!(slow.stdout, "before\n");
        assert_eq!(
            slow.error.as_deref(),
            Some("the command ran longer than 2 s and was killed")
        );
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(10),
            "{took:?}"
        );
        // Its whole process group went: no sleep is left in the container.
        let r = exec(&c, "inst-1", &["sh", "-c", "ps | grep -c '[s]leep 30'"], 5).await;
        assert_eq!(r.stdout.trim(), "0", "{r:?}");
        let answer = http_get(port, "/index.html").await;
        assert!(answer.contains("hello"), "{answer}");

        // A background process holding stdout open is not waited for.
        let before = Instant::now();
        let r = exec(&c, "inst-1", &["sh", "-c", "sleep 20 & echo started"], 30).await;
        assert_eq!((r.exit_code, r.stdout.as_str()), (Some(0), "started\n"));
        assert!(
            before.elapsed() < Duration::from_secs(5),
            "{:?}",
            before.elapsed()
        );

        // Over 1 MiB of output: cut, and the answer still fits the bus.
        let r = exec(
            &c,
            "inst-1",
            &["sh", "-c", "yes kiln | head -c 3000000"],
            10,
        )
        .await;
        assert_eq!(r.exit_code, Some(0), "{:?}", r.error);
        assert!(r.truncated);
        assert!(
            r.stdout.len() > 512 << 10 && r.stdout.len() <= 1 << 20,
            "{}",
            r.stdout.len()
        );
        assert!(r.stdout.starts_with("kiln\nkiln\n"));
    });
    c.shutdown();
    c.block_on(c.bus.state("inst-1", "STOPPED", Duration::from_secs(10)));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}
