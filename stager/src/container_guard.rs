//! Sandbox containers (a staging's, a Dockerfile RUN step's) are destroyed by the work that
//! created them; a [`ContainerGuard`] destroys one in the background when that work is
//! abandoned (its future dropped) before it got there.

use kiln_containers::Backend;
use tracing::warn;

/// Destroys its container on the runtime when dropped armed.
pub(crate) struct ContainerGuard {
    backend: Backend,
    handle: Option<String>,
    /// What the container is for, in the log lines ("staging", "RUN").
    what: &'static str,
}

impl ContainerGuard {
    /// Guards the container `handle`.
    pub(crate) fn new(backend: Backend, handle: String, what: &'static str) -> ContainerGuard {
        ContainerGuard {
            backend,
            handle: Some(handle),
            what,
        }
    }

    /// The work destroys the container itself from here on.
    pub(crate) fn disarm(&mut self) {
        self.handle = None;
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        let (backend, what) = (self.backend.clone(), self.what);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = backend.destroy(&handle).await {
                        warn!(error = %e, handle, "destroying an abandoned {what} container");
                    }
                });
            }
            Err(_) => warn!(
                handle,
                "abandoned {what} container left behind: no runtime to destroy it"
            ),
        }
    }
}
