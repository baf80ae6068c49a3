//! Stack images an operator set (`kiln admin config set stack.<name>.image`): a start naming
//! one runs on it instead of the cell's own copy of the stack. The image is downloaded from
//! the controller's image store (an OCI layout as a tar) and imported into the backend's stack
//! store once per manifest digest; concurrent starts on one image wait for one download.

use std::sync::Arc;

use kiln_bus::StackImageRef;
use kiln_containers::Backend;
use tracing::info;

use crate::droplets::DropletCache;
use crate::error::StackImageError;

impl DropletCache {
    /// Makes sure the backend's stack store has `image`; its store name or digest is then
    /// what a container spec's `stack` names.
    pub async fn ensure_stack_image(
        &self,
        backend: &Backend,
        image: &StackImageRef,
    ) -> Result<(), StackImageError> {
        if backend.stack_image(&image.digest).is_some() {
            return Ok(());
        }
        let lock: Arc<tokio::sync::Mutex<()>> = self.lock_for(&image.digest);
        let _guard = lock.lock().await;
        if backend.stack_image(&image.digest).is_some() {
            return Ok(());
        }
        let archive = self.temp_path("stack-image");
        let result = async {
            self.download(&image.url, None, &archive)
                .await
                .map_err(|source| StackImageError::Fetch {
                    digest: image.digest.clone(),
                    source,
                })?;
            backend
                .import_stack_image(&archive, &image.digest)
                .await
                .map_err(|e| StackImageError::Import {
                    digest: image.digest.clone(),
                    message: error_chain(&e),
                })
        }
        .await;
        let _ = tokio::fs::remove_file(&archive).await;
        let imported = result?;
        info!(digest = %imported.digest, rootfs = %imported.rootfs.display(), "stack-image.imported");
        Ok(())
    }
}

/// An error and its sources, for the instance's log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
