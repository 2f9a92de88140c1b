//! The life of stored data beyond the runs that write it: the description of each cluster a
//! location keeps ([`describe`]), the catalog rebuilt from a location alone ([`import`]), the
//! check of what a location holds ([`validate`]) and the purge of what no backup needs
//! ([`purge`]).
//!
//! Like everything else on the server, it reaches storage only through agents.

pub mod describe;
pub mod import;
pub mod purge;
pub mod validate;
