//! An executor running in the test process on its own runtime, with everything it needs;
//! dropped (even on a failed assertion): the runtime ends (every task with it), then the
//! backend destroys what is left and unmounts its store.
#![allow(dead_code)]

use std::time::Duration;

use kiln_bus::cell::{self, ExecResult, InstanceExec};
use kiln_containers::Backend;
use kiln_executor::{Config, Executor};

use super::{config, DropletServer, Recorder};

pub struct Cell {
    /// Dropped first: its tasks hold the backend.
    pub rt: Option<tokio::runtime::Runtime>,
    pub executor: Option<Executor>,
    pub backend: Option<Backend>,
    pub client: async_nats::Client,
    pub bus: Recorder,
    pub droplets: DropletServer,
    pub config: Config,
    pub nats: kiln_testkit::Nats,
    /// `None` once kept because the clean-up failed: removing it would delete through
    /// whatever is still mounted in it.
    dir: Option<tempfile::TempDir>,
}

impl Cell {
    pub fn new(index: u8) -> Cell {
        Cell::with(index, |_| {})
    }

    /// A cell whose config `adjust` changed first.
    pub fn with(index: u8, adjust: impl FnOnce(&mut Config)) -> Cell {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = kiln_testkit::Nats::start();
        let mut config = config(index, dir.path(), &nats.url);
        adjust(&mut config);
        // Until the cell exists (its drop cleans up), a failed set-up cleans up here, after
        // the runtime is gone: the backend may have mounted its store.
        let guard = CleanUpOnPanic(config.backend_config());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (backend, client, bus, droplets) = rt.block_on(async {
            let backend = Backend::new(config.backend_config())
                .await
                .expect("backend");
            kiln_executor::import_stack(&backend, "tiny")
                .await
                .expect("tiny stack");
            let client = async_nats::connect(&nats.url).await.expect("nats");
            let bus = Recorder::start(&client).await;
            (backend, client, bus, DropletServer::start().await)
        });
        let mut cell = Cell {
            rt: Some(rt),
            executor: None,
            backend: Some(backend),
            client,
            bus,
            droplets,
            config,
            nats,
            dir: Some(dir),
        };
        std::mem::forget(guard);
        cell.start_executor();
        cell
    }

    pub fn start_executor(&mut self) {
        let (config, backend, url) = (
            self.config.clone(),
            self.backend().clone(),
            self.nats.url.clone(),
        );
        let executor = self.block_on(async move {
            let nats = async_nats::connect(&url).await.expect("nats");
            Executor::start(config, backend, nats)
                .await
                .expect("executor starts")
        });
        self.executor = Some(executor);
    }

    pub fn backend(&self) -> &Backend {
        self.backend.as_ref().expect("backend")
    }

    pub fn executor(&self) -> &Executor {
        self.executor.as_ref().expect("executor")
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("runtime").block_on(f)
    }

    /// Publishes a command.
    pub async fn send<T: serde::Serialize>(&self, subject: String, message: &T) {
        self.client
            .publish(subject, kiln_bus::encode(message).into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }

    /// Stops the executor gracefully.
    pub fn shutdown(&mut self) {
        if let Some(executor) = self.executor.take() {
            self.block_on(executor.shutdown());
        }
    }

    /// What the backend still holds on the machine.
    pub fn leftovers(&self) -> Vec<String> {
        self.backend().resources_on_machine()
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        drop(self.executor.take());
        drop(self.backend.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(20));
        }
        let config = self.config.backend_config();
        if let Err(e) = clean_up(&config) {
            let kept = self.dir.take().map(tempfile::TempDir::keep);
            fail_clean_up(&config, &format!("(dir kept: {kept:?})"), e);
        }
    }
}

/// Cleans up a backend's data dir if dropped while panicking.
struct CleanUpOnPanic(kiln_containers::Config);

impl Drop for CleanUpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Err(e) = clean_up(&self.0) {
                fail_clean_up(&self.0, "", e);
            }
        }
    }
}

/// `Backend::destroy_all`, tried again for a while if it fails (a mount still busy, a task
/// still dropping its handle on the backend): on `Err`, things are left on the machine.
pub fn clean_up(config: &kiln_containers::Config) -> Result<(), kiln_containers::Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Backend::destroy_all(config) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!(
                    "cleaning up {} failed, trying again: {e}",
                    config.data_dir.display()
                );
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reports a failed clean-up loudly: on stderr, and as a panic that fails the test unless it
/// is failing already (a panic while unwinding would abort the whole test binary).
pub fn fail_clean_up(config: &kiln_containers::Config, note: &str, e: kiln_containers::Error) {
    let message = format!(
        "LEAK: cleaning up {} failed, it is left on the machine {note}: {e}",
        config.data_dir.display()
    );
    eprintln!("{message}");
    if !std::thread::panicking() {
        panic!("{message}");
    }
}

/// Asks the cell to run `command` in `instance`; its answer.
pub async fn exec(c: &Cell, instance: &str, command: &[&str], timeout_secs: u64) -> ExecResult {
    let request = InstanceExec {
        instance_guid: instance.into(),
        command: command.iter().map(|a| a.to_string()).collect(),
        timeout_secs,
        session: None,
    };
    let answer = c
        .client
        .send_request(
            cell::exec_subject(&c.config.cell_id),
            async_nats::Request::new()
                .payload(kiln_bus::encode(&request).into())
                .timeout(Some(Duration::from_secs(timeout_secs.max(1) + 10))),
        )
        .await
        .expect("the cell answers");
    kiln_bus::decode("exec reply", &answer.payload).expect("an ExecResult")
}
