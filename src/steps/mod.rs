//! The import steps, one file each. A step builds its commands with pure functions,
//! runs them through the shared executor, and parses what it needs from their output.

mod cleanup;
mod context;
mod mount;
mod pull;
mod reload;
mod rsync;
mod snapshot;

pub use cleanup::{destroy_command, destroy_dataset, remove_container, rm_command, umount_command};
pub use context::{StepContext, StepError, Tools, run_step_command};
pub use mount::{CONTAINER_PREFIX, ContainerName, Mounted, from_command, mount, mount_command};
pub use pull::{ImageId, pull, pull_command, parse_image_id};
pub use reload::{Template, list_command, list_templates, parse_templates};
pub use rsync::{
    DatasetProperty, copy, create_command, create_dataset, exists_command, mountpoint_command, rsync_command,
    dataset_exists, read_mountpoint,
};
pub use snapshot::{BASE_SNAPSHOT, base_exists_command, has_base_snapshot, referenced_command, snapshot, snapshot_command};
