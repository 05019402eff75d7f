//! Integration tests: the real buildah, rsync and zfs against the loopback registry.
//! `scripts/setup` prepares the machine and `scripts/test` runs these.

mod faults;
mod http;
mod http_support;
mod import;
mod lifecycle;
mod parity;
mod restart;
mod support;
mod sweep;
mod tree;
