//! Peer-benchmark timings.
