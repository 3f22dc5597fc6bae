//! End-to-end harness for ferrokv: starts real member processes and drives them with real clients.
