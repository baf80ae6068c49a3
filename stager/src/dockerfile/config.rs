//! The image config a stage accumulates (`ENV`, `USER`, `WORKDIR`, `CMD`, `ENTRYPOINT`,
//! `EXPOSE`, `LABEL`) and its OCI form.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kiln_rootfs::store::StackImage;
use oci_spec::image::{
    Arch, ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder, Os, RootFsBuilder,
};

/// What the image config says so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ImageState {
    /// `ENV`, in the order first set.
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub cmd: Option<Vec<String>>,
    /// Whether `CMD` was set in this stage (an `ENTRYPOINT` clears an inherited one).
    pub cmd_set_here: bool,
    pub entrypoint: Option<Vec<String>>,
    pub exposed: BTreeSet<String>,
    pub labels: BTreeMap<String, String>,
}

impl ImageState {
    /// The config of a stack image of the store.
    pub fn from_stack(image: &StackImage) -> Self {
        let mut state = ImageState {
            user: image.user.clone().filter(|u| !u.is_empty()),
            workdir: image.working_dir.clone().filter(|w| !w.is_empty()),
            ..ImageState::default()
        };
        for entry in &image.env {
            if let Some((k, v)) = entry.split_once('=') {
                state.set_env(k, v);
            }
        }
        state
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.env.push((key.to_string(), value.to_string())),
        }
    }

    pub fn env_value(&self, key: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// `KEY=VALUE` entries.
    pub fn env_list(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// The OCI image config (without `rootfs.diff_ids`, which the layout writer fills in).
    pub fn to_oci(&self) -> Result<ImageConfiguration, oci_spec::OciSpecError> {
        let mut config = ConfigBuilder::default().env(self.env_list());
        if let Some(user) = &self.user {
            config = config.user(user.clone());
        }
        if let Some(dir) = &self.workdir {
            config = config.working_dir(dir.clone());
        }
        if let Some(cmd) = &self.cmd {
            config = config.cmd(cmd.clone());
        }
        if let Some(ep) = &self.entrypoint {
            config = config.entrypoint(ep.clone());
        }
        if !self.exposed.is_empty() {
            config = config.exposed_ports(self.exposed.iter().cloned().collect::<Vec<_>>());
        }
        if !self.labels.is_empty() {
            config = config.labels(
                self.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            );
        }
        ImageConfigurationBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .config(config.build()?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(Vec::<String>::new())
                    .build()?,
            )
            .build()
    }
}
