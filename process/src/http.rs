//! A small HTTP/1.1 server for the pages beside the gRPC APIs: Prometheus's `/metrics` and the
//! status page. A bounded number of connections at once, each closed after a while, TLS when
//! given a configuration: it serves scrapers and operators' browsers, not the world.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An answer.
pub type Answer = Response<Full<Bytes>>;

/// What answers each request.
pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// What makes the metrics page: the metrics in Prometheus's text format.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 16;
/// Longest a connection is kept.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);
/// Longest a TLS handshake may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Serves `handler` on `listener` (over TLS with `tls`) until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(|config| {
        // Browsers speak HTTP/1.1 here: the API's configuration offers only h2.
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
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
                tracing::warn!(%error, "accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let acceptor = acceptor.clone();
        tasks.spawn(async move {
            let _slot = slot;
            match acceptor {
                None => connection(stream, handler, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, handler, shutdown).await,
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn connection<S>(stream: S, handler: Handler, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(request).await) }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = tokio::time::timeout(CONNECTION_LIMIT, connection) => {}
    }
}

/// Serves `/metrics` on `listener` until `shutdown` fires.
pub async fn serve_metrics(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    let handler: Handler = Arc::new(move |request| {
        let answer = metrics_answer(&request, &render);
        Box::pin(async move { answer })
    });
    serve(listener, None, handler, shutdown).await;
}

/// An answer with this status, content type and body.
pub fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn metrics_answer(request: &Request<Incoming>, render: &Render) -> Answer {
    if request.uri().path() != "/metrics" {
        answer(StatusCode::NOT_FOUND, "text/plain", "only /metrics here\n")
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n",
        )
    } else {
        answer(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(),
        )
    }
}
