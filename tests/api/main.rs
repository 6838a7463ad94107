//! HTTP integration tests: a real server on a random port over a real sled directory.

mod auditor;
mod auth;
mod crash;
mod helpers;
mod merchant;
mod storage;
