//! The write-ahead log: the Raft log and vote, durable before a write is acknowledged.
