//! The plain-HTTP endpoint Prometheus scrapes: `GET /metrics` answers the text format that
//! `render` makes, anything else 404. HTTP/1.1 only, a bounded number of connections at once,
//! each closed after a while: it serves a scraper, not the world.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What makes the page: the metrics in Prometheus's text format.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 16;
/// Longest a connection is kept.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// Serves `/metrics` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let render = render.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let render = render.clone();
                async move { Ok::<_, Infallible>(answer(&request, &render)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_LIMIT, connection) => {}
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

fn answer(request: &Request<hyper::body::Incoming>, render: &Render) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics here\n".to_string(),
        )
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".to_string(),
        )
    } else {
        (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
