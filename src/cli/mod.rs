//! The operator CLI: `coppice import`, `coppice step ...` and `coppice templates`.

pub mod args;
mod commands;
mod print;

pub use commands::run;
