//! End-to-end harness of lcserve: a whole deployment on loopback inside one test process.
//!
//! [`Cluster::start`] brings up a real `redis-server` ([`RedisServer`]), the kvstore service over
//! it, prefill and decode workers on the reference model, and the router — every one of them the
//! library `run` the `lcserve` binary calls, talking real gRPC over 127.0.0.1. Each service runs
//! on a runtime of its own, so a test can [`Node::kill`] a worker the way a crash would (its
//! connections drop mid-stream), or [`Node::drain`] it the way SIGTERM stops the process.
#![forbid(unsafe_code)]

mod cluster;
pub mod python;
mod redis;

pub use cluster::{Cluster, ClusterConfig, Node, reference_model_path};
pub use redis::RedisServer;
