//! Test harness: starts real skuld nodes on free loopback ports.
