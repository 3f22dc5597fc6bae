//! The MVCC key-value store on redb: the state machine that Raft entries are applied to.
