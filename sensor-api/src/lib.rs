//! Tetragon's gRPC API (package `tetragon`), from the protos in `proto/`:
//! the event and control messages, the `FineGuidanceSensors` service (the
//! daemon serves it) and its client (`sensor getevents`, `sensor policy`),
//! with protojson in Tetragon's field names for both directions.
#![allow(clippy::all, missing_docs)]

pub mod tetragon {
    include!(concat!(env!("OUT_DIR"), "/tetragon.rs"));
    include!(concat!(env!("OUT_DIR"), "/tetragon.serde.rs"));
}
