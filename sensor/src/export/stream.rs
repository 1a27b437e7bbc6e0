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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::event::{Event, QuarantineEvent};
    use sensor_api::tetragon::get_events_response::Event as Proto;

    #[test]
    fn the_protobuf_event_is_read_from_the_json_one() {
        let e = Envelope {
            event: Event::SensorQuarantine(QuarantineEvent {
                namespace: "shop".into(),
                pod: "web-1".into(),
                pod_uid: "uid".into(),
                rule: "exfiltration".into(),
                exec_ids: vec!["id".into()],
                stage: "node".into(),
                outcome: "isolated".into(),
                error: None,
            }),
            node_name: "node-a".into(),
            time: "2026-11-26T12:00:00.5Z".into(),
        };
        let p = to_proto(&e).unwrap();
        assert_eq!(p.node_name, "node-a");
        assert_eq!(
            p.time.map(|t| (t.seconds, t.nanos)),
            Some((1_795_694_400, 500_000_000))
        );
        match p.event {
            Some(Proto::SensorQuarantine(q)) => {
                assert_eq!((q.pod.as_str(), q.outcome.as_str()), ("web-1", "isolated"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_int_argument_a_return_value_and_ancestors_reach_the_protobuf_event() {
        use crate::export::event::{Argument, ProcessKprobe};
        let e = Envelope {
            event: Event::ProcessKprobe(ProcessKprobe {
                process: crate::export::event::Process {
                    start_time: "2026-11-26T12:00:00Z".into(),
                    ..Default::default()
                },
                parent: None,
                ancestors: vec![crate::export::event::Process {
                    pid: 1,
                    binary: "/sbin/init".into(),
                    start_time: "2026-11-26T11:00:00Z".into(),
                    ..Default::default()
                }],
                function_name: "security_socket_connect".into(),
                args: vec![Argument::IntArg(16)],
                return_: Some(Argument::IntArg(-1)),
                action: "KPROBE_ACTION_OVERRIDE".into(),
                policy_name: "p".into(),
                message: None,
                tags: Vec::new(),
            }),
            node_name: "node-a".into(),
            time: "2026-11-26T12:00:00Z".into(),
        };
        let Some(Proto::ProcessKprobe(k)) = to_proto(&e).unwrap().event else {
            panic!("not a kprobe event");
        };
        let int = |a: Option<&sensor_api::tetragon::KprobeArgument>| {
            use sensor_api::tetragon::kprobe_argument::Arg;
            match a.and_then(|a| a.arg.clone()) {
                Some(Arg::IntArg(n)) => Some(n),
                _ => None,
            }
        };
        assert_eq!(int(k.args.first()), Some(16));
        assert_eq!(int(k.r#return.as_ref()), Some(-1));
        assert_eq!(k.ancestors.len(), 1);
        assert_eq!(k.ancestors[0].binary, "/sbin/init");
        assert_eq!(k.ancestors[0].pid.as_ref().map(|p| p.value), Some(1));
    }
}
