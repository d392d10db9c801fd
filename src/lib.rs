//! ttsd: a local text-to-speech daemon.
pub mod bench;
pub mod engine;
pub mod mlx_info;
pub mod synth_cli;
pub mod worker;
pub mod protocol;
pub mod config;
pub mod supervisor;
pub mod log;
pub mod client;
