//! The status page over HTTP: `/` (the page), `/status.js` and `/status.css` (what it runs and
//! looks like), `/status.json` (what it shows, refreshed by the page every second), `/login`
//! and `/logout`.
//!
//! With tokens on, everything but the page's own files needs a token with the `read` scope:
//! as `authorization: Bearer <token>` (scripts) or as the `coffer_token` cookie the login form
//! sets (browsers). The cookie is `HttpOnly` (scripts on the page cannot read it),
//! `SameSite=Strict` (other sites cannot make the browser send it) and `Secure` over TLS. The page
//! is read-only: no request it accepts changes anything but the cookie.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use coffer_process::http::{Answer, Handler, answer};

use super::StatusPage;
use crate::auth::{AuthMode, Denied, Scope, Tokens, bearer_secret};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// The cookie that carries the token.
const COOKIE: &str = "coffer_token";
/// How long a browser keeps the cookie.
const COOKIE_SECONDS: u32 = 12 * 60 * 60;
/// Largest login form accepted.
const FORM_LIMIT: usize = 4096;

/// The page's files may only load from the page's own address; nothing may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Binds `address` and serves `coffer`'s status page there (over the API's TLS when it has one)
/// until `stop` fires; returns the bound address and the serving task.
///
/// Fails when the API's TLS files cannot be loaded or the address cannot be bound.
pub async fn start(
    coffer: &crate::Coffer,
    address: SocketAddr,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let tls = coffer
        .api_tls()
        .map(crate::config::ApiTls::server_config)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("load the API's TLS files for the status page")?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("bind status page address {address}"))?;
    let bound = listener
        .local_addr()
        .context("read bound status page address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(address = %bound, url = %format!("{scheme}://{bound}/"), "status page serving");
    let handler = handler(coffer.status_page(), coffer.tokens().clone(), tls.is_some());
    let task = tokio::spawn(coffer_process::http::serve(listener, tls, handler, stop));
    Ok((bound, task))
}

/// Serves the status page; `secure` marks the cookie for TLS only.
pub fn handler(page: StatusPage, tokens: Tokens, secure: bool) -> Handler {
    let site = Arc::new(Site {
        page,
        tokens,
        secure,
    });
    Arc::new(move |request| {
        let site = site.clone();
        Box::pin(async move { hardened(site.answer(request).await) })
    })
}

struct Site {
    page: StatusPage,
    tokens: Tokens,
    secure: bool,
}

impl Site {
    async fn answer(&self, request: Request<Incoming>) -> Answer {
        let get = request.method() == Method::GET || request.method() == Method::HEAD;
        let post = request.method() == Method::POST;
        match request.uri().path() {
            "/" | "/index.html" if get => answer(StatusCode::OK, "text/html; charset=utf-8", PAGE),
            "/status.js" if get => answer(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
            "/status.css" if get => answer(StatusCode::OK, "text/css; charset=utf-8", STYLE),
            "/status.json" if get => self.status(&request).await,
            "/login" if post => self.login(request).await,
            "/logout" if post => self.logout(),
            "/" | "/index.html" | "/status.js" | "/status.css" | "/status.json" => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
            }
            "/login" | "/logout" => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn status(&self, request: &Request<Incoming>) -> Answer {
        if let Err(refused) = self.authorize(request).await {
            return refused;
        }
        match self.page.report().await {
            Ok(report) => match serde_json::to_vec(&report) {
                Ok(body) => answer(StatusCode::OK, "application/json", body),
                Err(error) => {
                    tracing::warn!(%error, "render the status report");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "the report failed\n")
                }
            },
            Err(error) => {
                tracing::warn!(%error, "gather the status report");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the catalog could not be read: {error}\n"),
                )
            }
        }
    }

    /// Lets a request through when authentication is off or it carries a token with the read
    /// scope (header first, then cookie); otherwise the answer that refuses it.
    async fn authorize(&self, request: &Request<Incoming>) -> Result<(), Answer> {
        if self.tokens.mode() == AuthMode::None {
            return Ok(());
        }
        let secret = match request.headers().get(header::AUTHORIZATION) {
            Some(value) => {
                // A value that is not text is no more a bearer token than a malformed one.
                let value = value.to_str().unwrap_or_default();
                Some(bearer_secret(value).map_err(refusal)?.to_owned())
            }
            None => cookie(request, COOKIE),
        };
        let Some(secret) = secret else {
            return Err(text(
                StatusCode::UNAUTHORIZED,
                "sign in with a token that has the read scope\n",
            ));
        };
        self.tokens
            .authorize_secret(Scope::Read, &secret, "the status page")
            .await
            .map(|_| ())
            .map_err(refusal)
    }

    /// Checks the form's token and, when it may read, sets the cookie and goes back to the page.
    async fn login(&self, request: Request<Incoming>) -> Answer {
        let body = match Limited::new(request.into_body(), FORM_LIMIT)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large\n"),
        };
        let Some(secret) = form_urlencoded::parse(&body)
            .find(|(key, _)| key == "token")
            .map(|(_, value)| value.trim().to_owned())
        else {
            return text(StatusCode::BAD_REQUEST, "the form has no token\n");
        };
        if let Err(denied) = self
            .tokens
            .authorize_secret(Scope::Read, &secret, "the status page")
            .await
        {
            return refusal(denied);
        }
        let mut response = redirect_home();
        let attributes = if self.secure { "; Secure" } else { "" };
        set_cookie(
            &mut response,
            &format!(
                "{COOKIE}={secret}; Path=/; Max-Age={COOKIE_SECONDS}; HttpOnly; \
                 SameSite=Strict{attributes}"
            ),
        );
        response
    }

    fn logout(&self) -> Answer {
        let mut response = redirect_home();
        let attributes = if self.secure { "; Secure" } else { "" };
        set_cookie(
            &mut response,
            &format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{attributes}"),
        );
        response
    }
}

fn text(status: StatusCode, body: &str) -> Answer {
    answer(status, "text/plain; charset=utf-8", body.to_owned())
}

fn refusal(denied: Denied) -> Answer {
    match denied {
        Denied::Unauthenticated(message) => text(StatusCode::UNAUTHORIZED, &format!("{message}\n")),
        Denied::PermissionDenied(message) => text(StatusCode::FORBIDDEN, &format!("{message}\n")),
        Denied::Unavailable(message) => {
            text(StatusCode::SERVICE_UNAVAILABLE, &format!("{message}\n"))
        }
    }
}

fn redirect_home() -> Answer {
    let mut response = answer(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/"));
    response
}

fn set_cookie(response: &mut Answer, value: &str) {
    // A token secret is base64url and underscores only: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

/// The value of cookie `name`, if the request carries it.
fn cookie(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Headers every answer carries: nothing cached, nothing sniffed or framed, no referrer.
fn hardened(mut response: Answer) -> Answer {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
