//! Integration tests: the real gateway binary, real agent processes, curl and a real
//! WebSocket client, all on loopback ports chosen by the OS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod suites;
