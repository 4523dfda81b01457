//! One module per subcommand.

#[cfg(target_os = "linux")]
pub mod install_service;
pub mod trace;
#[cfg(target_os = "linux")]
pub mod who;
