//! A small HTTP/1 server for the endpoints scrapers and the kubelet call
//! (`/metrics`, `/healthz`, `/readyz`): GET a path, get a status and a
//! text body. Nothing here parses more than the path.
use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What a path answers: status, content type, body.
pub type Reply = (StatusCode, &'static str, String);

pub type Route = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

pub const TEXT: &str = "text/plain; charset=utf-8";

/// Binds `addr` (`host:port`; `:port` means localhost, where a probe or a
/// node-local scraper reaches it and nothing else does).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let addr = if addr.starts_with(':') {
        format!("127.0.0.1{addr}")
    } else {
        addr.to_string()
    };
    TcpListener::bind(addr).await
}

/// Serves `route` on `listener` until the runtime ends.
pub async fn serve(listener: TcpListener, route: Route) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an HTTP connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let route = route.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (status, ctype, body) = if req.method() == hyper::Method::GET {
                    route(req.uri().path())
                } else {
                    (StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into())
                };
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(ctype),
                );
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection");
            }
        });
    }
}

/// Binds `addr` and serves `route` there on a task of its own; returns
/// the address bound (the port, when `addr` asked for port 0).
pub async fn spawn(addr: &str, route: Route) -> std::io::Result<std::net::SocketAddr> {
    let listener = bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, route));
    Ok(local)
}
