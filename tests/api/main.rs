//! HTTP integration tests: a real server on a random port over a real sled directory.

mod accountability;
mod audit_events;
mod audit_stream;
mod auditor;
mod auth;
mod backup;
mod blind_index;
mod browser;
mod crash;
mod customer;
mod disclosure;
mod epochs;
mod helpers;
mod hsm;
mod identity;
mod input;
mod interposed;
mod listener;
mod merchant;
mod metrics;
mod openapi;
mod operate;
mod payment;
#[path = "../support/pg.rs"]
mod pg;
mod pg_hardening;
mod portal;
mod request_log;
mod scale_out;
mod shredding;
mod storage;
mod transparency;
