//! `sensor`: a network immune system for Kubernetes nodes. Each stage of
//! the pipeline has its own module, in the order data flows: `load` (the
//! kernel side: loading, pinning, adoption), `decode` (with `returns`,
//! which joins a syscall's record with its return), `process` (cache and
//! /proc scan), `enrich` (pod context), `policy` (Tetragon policies) and
//! `brain` (rules over ancestry), with `documents` routing YAML to them and
//! `reconcile` keeping one policy set from every source, `antibody`
//! (quarantine), `pipeline`, `export` and `metrics`. `daemon` runs them
//! (with `cluster`, its Kubernetes thread, `scopes`, pod-scoped policies,
//! and `sched`, its place in the CPU scheduler); `control` is the gRPC API
//! and its clients; `health` and `http` serve the probes and the
//! Prometheus scrape. The `sensor` binary is the command line over this.
pub mod antibody;
pub mod brain;
pub mod cluster;
pub mod control;
pub mod daemon;
pub mod decode;
pub mod documents;
pub mod duration;
pub mod enrich;
pub mod export;
pub mod health;
pub mod http;
pub mod load;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod process;
pub mod reconcile;
pub mod returns;
pub mod sched;
pub mod scopes;
