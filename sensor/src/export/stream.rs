//! The gRPC event stream's sink: each event, in the protobuf form of
//! Tetragon's `GetEventsResponse`, broadcast to the `GetEvents` streams.
//! The protobuf message is read from the event's JSON (Tetragon's protojson
//! form), so the two outputs cannot drift apart; nothing is converted while
//! no stream listens.
use std::sync::Arc;

use sensor_api::tetragon::GetEventsResponse;
use tokio::sync::broadcast;

use super::{Envelope, Sink};

/// Events a slow stream may fall behind by before it loses some (it is
/// then told how many, in a `rate_limit_info` event).
pub const BACKLOG: usize = 16384;

pub type Events = broadcast::Sender<Arc<GetEventsResponse>>;

pub struct StreamSink(pub Events);

/// The protobuf form of one event.
pub fn to_proto(event: &Envelope) -> Result<GetEventsResponse, serde_json::Error> {
    serde_json::from_value(serde_json::to_value(event)?)
}

impl Sink for StreamSink {
    fn write(&mut self, event: &Envelope) -> std::io::Result<()> {
        if self.0.receiver_count() == 0 {
            return Ok(());
        }
        let proto = to_proto(event).map_err(std::io::Error::other)?;
        // No receiver left between the check and the send is not an error.
        let _ = self.0.send(Arc::new(proto));
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
