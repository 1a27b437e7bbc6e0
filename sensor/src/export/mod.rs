//! The end of the pipeline: Tetragon-compatible events (`event`, built by
//! `build`), written as
//! JSON lines to stdout or a rotating file (`json`), as one human line per
//! event (`compact`), and to the gRPC `GetEvents` streams (`stream`);
//! which event kinds carry `ancestors` (`ancestors`).
pub mod ancestors;
pub mod binary;
pub mod build;
pub mod compact;
pub mod creds;
pub mod event;
pub mod filter;
pub mod json;
pub mod ns;
pub mod shape;
pub mod stream;

use std::io::Write;

pub use event::Envelope;

/// Where events go. Every sink sees every event, in order.
pub trait Sink {
    fn write(&mut self, event: &Envelope) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
}

/// All configured sinks.
#[derive(Default)]
pub struct Exporter {
    sinks: Vec<Box<dyn Sink>>,
    pub exported: u64,
}

impl Exporter {
    pub fn add(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    pub fn export(&mut self, event: &Envelope) {
        self.exported += 1;
        for s in &mut self.sinks {
            if let Err(e) = s.write(event) {
                tracing::error!(error = %e, "export failed");
            }
        }
    }

    pub fn flush(&mut self) {
        for s in &mut self.sinks {
            if let Err(e) = s.flush() {
                tracing::error!(error = %e, "export flush failed");
            }
        }
    }
}

/// Compact lines to any writer (the terminal).
pub struct CompactSink<W: Write>(pub W);

impl<W: Write> Sink for CompactSink<W> {
    fn write(&mut self, event: &Envelope) -> std::io::Result<()> {
        writeln!(self.0, "{}", compact::line(event))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
