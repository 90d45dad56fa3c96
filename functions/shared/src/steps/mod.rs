//! One module per step of the workflows.

pub mod cleanup;
pub mod create_image;
pub mod launch;
pub mod verify_instance;
pub mod wait_image;
