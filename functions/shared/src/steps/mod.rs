//! One module per step of the workflows.

pub mod approval;
pub mod cleanup;
pub mod copy_image;
pub mod create_image;
pub mod fleet;
pub mod grant_kms;
pub mod launch;
pub mod reap;
pub mod share_image;
pub mod targets;
pub mod verify_instance;
pub mod wait_image;
