//! The robustness suite: randomized traffic against a real cluster while nemeses inject faults,
//! every history checked afterwards. Issue 11 describes it; docs/robustness.md says how to run it.
//!
//! - [`schedule`] plans a schedule from its seed (traffic mix, nemesis timeline) and runs it;
//! - [`traffic`] are the clients, recording each request in a [`history::History`];
//! - [`nemesis`] are the faults and how each is undone; [`failpoints`] arms the crash points
//!   inside the node (the `ferrokv-failpoints` build only);
//! - [`checker`] are pure functions from a history to anomalies;
//! - [`report`] prints a failing schedule: seed, timeline, the smallest part of the history.
//!
//! Members run on network-namespace hosts ([`crate::host_cluster`]), so running a schedule
//! needs root.

pub mod checker;
pub mod failpoints;
pub mod history;
pub mod nemesis;
pub mod report;
pub mod schedule;
pub mod traffic;
