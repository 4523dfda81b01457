//! One module per subcommand.

pub mod doctor;
pub mod history;
#[cfg(target_os = "linux")]
pub mod install_service;
#[cfg(target_os = "linux")]
pub mod record;
pub mod reserve;
pub mod trace;
#[cfg(target_os = "linux")]
pub mod who;
