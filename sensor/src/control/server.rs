//! The gRPC server: `FineGuidanceSensors` on a unix socket (mode 0600: the
//! API changes what the kernel enforces). Policy calls go to the daemon's
//! loop and wait for its answer; `GetEvents` streams read the event
//! broadcast and filter on their own tasks.
use std::path::{Path, PathBuf};
use std::pin::Pin;

use sensor_api::tetragon::fine_guidance_sensors_server::{
    FineGuidanceSensors, FineGuidanceSensorsServer,
};
use sensor_api::tetragon::get_events_response::Event;
use sensor_api::tetragon::*;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request as GrpcRequest, Response, Status};

use super::{Call, Reply, Request};
use crate::export::filter::Filters;
use crate::export::stream::Events;
use crate::policy::Mode;

pub struct Api {
    pub calls: mpsc::Sender<Request>,
    pub events: Events,
    pub node_name: String,
    /// Which kinds carry ancestors, for the requests' filters.
    pub ancestors: crate::export::ancestors::AncestorKinds,
}

/// `--server-address`: `unix:///path` (Tetragon's form) or a plain path.
pub fn socket_path(address: &str) -> Result<PathBuf, String> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(format!(
            "{address}: this sensor serves its API on a unix socket only (unix:///path)"
        ))
    }
}

/// Binds the socket at `path`, owner-only. A stale socket of a previous
/// daemon is replaced.
pub fn listen(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Owner-only from the moment it exists: no window in which another
    // user could connect before a chmod. (umask is process-wide; what
    // another thread creates meanwhile is only made more private.)
    // SAFETY: umask has no preconditions.
    let old = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the API until the daemon stops.
pub async fn serve(listener: tokio::net::UnixListener, api: Api) -> std::io::Result<()> {
    tonic::transport::Server::builder()
        .add_service(FineGuidanceSensorsServer::new(api))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
        .await
        .map_err(std::io::Error::other)
}

/// Removes the socket when the daemon stops.
pub fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}

impl Api {
    async fn call(&self, call: Call) -> Result<Reply, Status> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(Request { call, reply })
            .await
            .map_err(|_| Status::unavailable("the daemon is stopping"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("the daemon is stopping"))?
    }

    async fn done(&self, call: Call) -> Result<(), Status> {
        self.call(call).await.map(|_| ())
    }
}

fn mode(m: i32) -> Result<Mode, Status> {
    match TracingPolicyMode::try_from(m) {
        Ok(TracingPolicyMode::TpModeEnforce) => Ok(Mode::Enforce),
        Ok(TracingPolicyMode::TpModeMonitor) => Ok(Mode::Monitor),
        _ => Err(Status::invalid_argument(format!(
            "mode {m}: expected TP_MODE_ENFORCE or TP_MODE_MONITOR"
        ))),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<GetEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FineGuidanceSensors for Api {
    type GetEventsStream = EventStream;

    async fn get_events(
        &self,
        req: GrpcRequest<GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let filters =
            Filters::new(req.get_ref(), self.ancestors).map_err(Status::invalid_argument)?;
        let node = self.node_name.clone();
        let stream = BroadcastStream::new(self.events.subscribe()).filter_map(move |item| {
            match item {
                Ok(e) => filters.pass(&e).then(|| Ok((*e).clone())),
                // This stream fell behind: say how many it lost.
                Err(BroadcastStreamRecvError::Lagged(n)) => Some(Ok(GetEventsResponse {
                    event: Some(Event::RateLimitInfo(RateLimitInfo {
                        number_of_dropped_process_events: n,
                    })),
                    node_name: node.clone(),
                    ..Default::default()
                })),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_health(
        &self,
        _req: GrpcRequest<GetHealthStatusRequest>,
    ) -> Result<Response<GetHealthStatusResponse>, Status> {
        // The loop answers a List only while it runs: a live loop is health.
        let status = match self.call(Call::List).await {
            Ok(_) => (HealthStatusResult::HealthStatusRunning, "running"),
            Err(_) => (HealthStatusResult::HealthStatusStopped, "stopping"),
        };
        Ok(Response::new(GetHealthStatusResponse {
            health_status: vec![HealthStatus {
                event: HealthStatusType::Status as i32,
                status: status.0 as i32,
                details: status.1.into(),
            }],
        }))
    }

    async fn add_tracing_policy(
        &self,
        req: GrpcRequest<AddTracingPolicyRequest>,
    ) -> Result<Response<AddTracingPolicyResponse>, Status> {
        let yaml = req.into_inner().yaml;
        self.done(Call::Add { yaml }).await?;
        Ok(Response::new(AddTracingPolicyResponse {}))
    }

    async fn delete_tracing_policy(
        &self,
        req: GrpcRequest<DeleteTracingPolicyRequest>,
    ) -> Result<Response<DeleteTracingPolicyResponse>, Status> {
        let name = req.into_inner().name;
        self.done(Call::Delete { name }).await?;
        Ok(Response::new(DeleteTracingPolicyResponse {}))
    }

    async fn list_tracing_policies(
        &self,
        _req: GrpcRequest<ListTracingPoliciesRequest>,
    ) -> Result<Response<ListTracingPoliciesResponse>, Status> {
        match self.call(Call::List).await? {
            Reply::Policies(policies) => {
                Ok(Response::new(ListTracingPoliciesResponse { policies }))
            }
            Reply::Done => Err(Status::internal("no policy list")),
        }
    }

    async fn configure_tracing_policy(
        &self,
        req: GrpcRequest<ConfigureTracingPolicyRequest>,
    ) -> Result<Response<ConfigureTracingPolicyResponse>, Status> {
        let r = req.into_inner();
        let mode = r.mode.map(mode).transpose()?;
        self.done(Call::Configure {
            name: r.name,
            enable: r.enable,
            mode,
        })
        .await?;
        Ok(Response::new(ConfigureTracingPolicyResponse {}))
    }

    async fn enable_tracing_policy(
        &self,
        req: GrpcRequest<EnableTracingPolicyRequest>,
    ) -> Result<Response<EnableTracingPolicyResponse>, Status> {
        let name = req.into_inner().name;
        self.done(Call::Configure {
            name,
            enable: Some(true),
            mode: None,
        })
        .await?;
        Ok(Response::new(EnableTracingPolicyResponse {}))
    }

    async fn disable_tracing_policy(
        &self,
        req: GrpcRequest<DisableTracingPolicyRequest>,
    ) -> Result<Response<DisableTracingPolicyResponse>, Status> {
        let name = req.into_inner().name;
        self.done(Call::Configure {
            name,
            enable: Some(false),
            mode: None,
        })
        .await?;
        Ok(Response::new(DisableTracingPolicyResponse {}))
    }

    async fn get_version(
        &self,
        _req: GrpcRequest<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, Status> {
        Ok(Response::new(GetVersionResponse {
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }
}
