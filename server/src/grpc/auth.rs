//! The tower layer that authenticates and authorizes every call, before any handler runs:
//! the `authorization` header checked by [`Tokens::authorize`], the caller put in the
//! request's extensions for handlers that record it (runs' `started_by`), and a refusal
//! answered as a gRPC status (UNAUTHENTICATED, PERMISSION_DENIED) without calling the service.
//! The header's value is never logged.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;

use crate::auth::{Caller, Denied, Tokens};

/// Wraps every service of the router in [`AuthService`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    tokens: Tokens,
}

impl AuthLayer {
    pub fn new(tokens: Tokens) -> Self {
        Self { tokens }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// A service that lets through only the calls their token allows.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    tokens: Tokens,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for AuthService<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    RequestBody: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        // The service that was polled ready handles this call; the clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let tokens = self.tokens.clone();
        Box::pin(async move {
            let method = request.uri().path().to_string();
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|value| value.to_str().unwrap_or(""));
            match tokens.authorize(&method, authorization).await {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        request.extensions_mut().insert(caller);
                    }
                    inner.call(request).await
                }
                Err(denied) => {
                    tracing::info!(%method, reason = %denied, "call refused");
                    let status = match denied {
                        Denied::Unauthenticated(message) => Status::unauthenticated(message),
                        Denied::PermissionDenied(message) => Status::permission_denied(message),
                        Denied::Unavailable(message) => Status::unavailable(message),
                    };
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// The caller of a request the layer let through; anonymous when there is none (a server
/// without authentication puts the anonymous caller there too).
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous)
}
