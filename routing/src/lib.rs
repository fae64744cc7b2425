//! Sessions and where they run.
//!
//! - [`SessionId`]: validated runtime session ids;
//! - [`SessionDirectory`]: session id → one sticky backend, with ownership and in-flight counts;
//! - [`cluster`]: the shared records behind a replica's directory (Redis);
//! - [`admission`]: session count and rate limits;
//! - [`provider`]: where a new session's backend comes from (static pool, process, sandbox, microVM);
//! - [`placement`]: one provider per runtime version, kept across reloads; a new session's version;
//! - [`lifecycle`]: the sweep that ends idle, expired and dead sessions;
//! - [`ping`]: the container contract's `/ping` probe;
//! - [`face`]: parsers of the faces' URLs, custom headers and JSON-RPC ids (untrusted input,
//!   fuzzed through [`fuzzing`]).
//!
//! Plain `http`/tokio types only: no Pingora here, so all of it is testable without a server.

pub mod admission;
pub mod cluster;
pub mod directory;
pub mod face;
pub mod fuzzing;
pub mod keeper;
pub mod lifecycle;
pub mod ping;
pub mod placement;
pub mod provider;
pub mod session_id;

pub use admission::{AdmissionLimits, Caller, Rejection};
pub use directory::{EndReason, Entry, OpenError, Session, SessionDirectory, Ticket, TicketError};
pub use provider::{Backend, BackendProvider, PlacementError};
pub use session_id::{SessionId, SessionIdError};
