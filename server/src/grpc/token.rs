//! `coffer.v1.TokenService`.

use coffer_proto::v1 as proto;
use coffer_proto::v1::token_service_server::TokenService;
use tonic::{Request, Response, Status};

use super::auth::caller;
use crate::auth::{Caller, NewToken, Tokens};

/// Implements `coffer.v1.TokenService`.
#[derive(Debug, Clone)]
pub struct TokenHandler {
    tokens: Tokens,
}

impl TokenHandler {
    /// A handler delegating to `tokens`.
    pub fn new(tokens: Tokens) -> Self {
        Self { tokens }
    }
}

#[tonic::async_trait]
impl TokenService for TokenHandler {
    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let by = caller(&request);
        let new = NewToken::try_from(request.into_inner())?;
        let (token, secret) = self.tokens.create(new, &by).await?;
        Ok(Response::new(proto::CreateTokenResponse {
            token: Some(token.into()),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        let tokens = self.tokens.list().await?;
        Ok(Response::new(proto::ListTokensResponse {
            tokens: tokens.into_iter().map(Into::into).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let by = caller(&request);
        let token = request.into_inner().token;
        if token.is_empty() {
            return Err(Status::invalid_argument("token is required"));
        }
        self.tokens.revoke(&token, &by).await?;
        Ok(Response::new(proto::RevokeTokenResponse {}))
    }

    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let token = match caller(&request) {
            Caller::Token { id, .. } => Some(self.tokens.get(id).await?.into()),
            Caller::Anonymous => None,
        };
        Ok(Response::new(proto::WhoAmIResponse { token }))
    }
}
