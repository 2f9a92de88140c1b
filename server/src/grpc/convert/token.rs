//! `coffer.v1` token messages and the domain's tokens.

use std::time::Duration;

use coffer_proto::v1 as proto;

use super::timestamp;
use crate::auth::{NewToken, Scope, Token};
use crate::error::{Error, Result};
use crate::model::Name;

impl TryFrom<proto::CreateTokenRequest> for NewToken {
    type Error = Error;

    fn try_from(request: proto::CreateTokenRequest) -> Result<Self> {
        let scope = match proto::TokenScope::try_from(request.scope) {
            Ok(proto::TokenScope::Read) => Scope::Read,
            Ok(proto::TokenScope::Operate) => Scope::Operate,
            Ok(proto::TokenScope::Admin) => Scope::Admin,
            Ok(proto::TokenScope::Unspecified) => {
                return Err(Error::invalid(
                    "scope",
                    "is required: read, operate or admin",
                ));
            }
            Err(_) => {
                return Err(Error::invalid(
                    "scope",
                    format!("{} is not a token scope", request.scope),
                ));
            }
        };
        let expire_after = request
            .expire_after
            .map(|after| {
                Duration::try_from(after)
                    .ok()
                    .filter(|after| !after.is_zero())
                    .ok_or_else(|| Error::invalid("expire_after", "must be a positive duration"))
            })
            .transpose()?;
        Ok(Self {
            name: Name::parse("name", &request.name)?,
            scope,
            expire_after,
        })
    }
}

pub(in crate::grpc) fn scope_out(scope: Scope) -> i32 {
    match scope {
        Scope::Read => proto::TokenScope::Read,
        Scope::Operate => proto::TokenScope::Operate,
        Scope::Admin => proto::TokenScope::Admin,
    }
    .into()
}

impl From<Token> for proto::Token {
    fn from(token: Token) -> Self {
        Self {
            id: token.id.to_string(),
            name: token.name.to_string(),
            scope: scope_out(token.scope),
            create_time: timestamp(token.create_time),
            expire_time: token.expire_time.and_then(timestamp),
            created_by: token.created_by,
            last_use_time: token.last_use_time.and_then(timestamp),
        }
    }
}
