"""amiflow's local AWS stack: moto, the project's real Lambda binaries under cargo-lambda's
runtime emulator, and a layer that makes moto behave as AWS does where amiflow depends on it."""
